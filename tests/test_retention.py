"""Retention on real SQLite files written by the request log's own writer."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from addons.retention import DAY_MS, RetentionPolicy, RetentionRunner, retention_step, used_bytes
from addons.store import RequestStore, open_for_writing

NOW_MS = 1_760_000_000_000


def fill(path: Path, count: int, *, spacing_ms: int, body_bytes: int = 2000, now_ms: int = NOW_MS) -> None:
    """Write `count` requests, oldest first, `spacing_ms` apart and ending at `now_ms`."""
    store = RequestStore(path, flush_interval=0.01)
    store.start()
    for i in range(count):
        started = now_ms - (count - 1 - i) * spacing_ms
        row = {"id": f"req-{i:05d}", "started_ms": started, "status": 200, "outcome": "ok",
               "provider": "openai", "requested_model": "m", "input_tokens": 3, "output_tokens": 2,
               "total_tokens": 5}
        payload = {"client_request": "x" * body_bytes, "response": "y" * body_bytes}
        store.submit(row, payload, (f"prompt number {i}", f"answer number {i}"))
    store.stop(timeout=30)
    assert store.stats.written == count


def counts(conn: sqlite3.Connection) -> tuple[int, int, int]:
    return tuple(conn.execute(f"select count(*) from {table}").fetchone()[0]
                 for table in ("requests", "payloads", "requests_fts"))


def test_days_deletes_old_requests_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    fill(path, 50, spacing_ms=DAY_MS // 5)  # ten days of rows, five a day
    conn = open_for_writing(path)
    rollup_before = conn.execute("select sum(requests) from rollup_hour").fetchone()[0]
    policy = RetentionPolicy(days=3)

    first = retention_step(conn, policy, now_ms=NOW_MS, batch=10)
    assert first.requests_deleted == 10
    assert first.more
    while retention_step(conn, policy, now_ms=NOW_MS, batch=10).more:
        pass

    oldest = conn.execute("select min(started_ms) from requests").fetchone()[0]
    assert oldest >= NOW_MS - 3 * DAY_MS
    requests, payloads, fts = counts(conn)
    assert requests == 16  # the rows of the last three days, both ends included
    assert payloads == requests
    assert fts == requests
    assert conn.execute("select count(*) from requests_fts where requests_fts match 'number'").fetchone()[0] == 16
    # The hourly rollups keep the whole history for Analytics.
    assert conn.execute("select sum(requests) from rollup_hour").fetchone()[0] == rollup_before
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_size_cap_deletes_oldest_bodies(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    fill(path, 100, spacing_ms=1000, body_bytes=4000)
    conn = open_for_writing(path)
    cap = used_bytes(conn) // 2
    policy = RetentionPolicy(max_bytes=cap)
    while retention_step(conn, policy, batch=5).more:
        pass

    assert used_bytes(conn) <= cap
    requests, payloads, fts = counts(conn)
    assert requests == 100  # metadata stays
    assert 0 < payloads < 100
    assert fts == payloads
    kept = [row[0] for row in conn.execute(
        "select requests.id from payloads join requests on requests.id = payloads.request_id order by 1")]
    assert kept == [f"req-{i:05d}" for i in range(100 - payloads, 100)]  # the newest bodies


def test_nothing_to_do_is_quick_noop(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    fill(path, 5, spacing_ms=1000)
    conn = open_for_writing(path)
    step = retention_step(conn, RetentionPolicy(days=30, max_bytes=10**9), now_ms=NOW_MS)
    assert (step.requests_deleted, step.payloads_deleted, step.more) == (0, 0, False)
    assert counts(conn) == (5, 5, 5)


def test_runner_waits_between_runs(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    # The runner uses the clock; the newest row is an hour old, so the cut falls between days.
    fill(path, 30, spacing_ms=DAY_MS, now_ms=int(time.time() * 1000) - 3600 * 1000)
    conn = open_for_writing(path)
    runner = RetentionRunner(RetentionPolicy(days=10), interval=3600, batch=100)
    runner.idle(conn)
    assert runner.requests_deleted == 20
    deleted = runner.requests_deleted
    started = time.monotonic()
    runner.idle(conn)  # not due again for an hour
    assert runner.requests_deleted == deleted
    assert time.monotonic() - started < 0.1


def test_writer_applies_retention_when_idle(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    fill(path, 10, spacing_ms=DAY_MS, now_ms=int(time.time() * 1000))
    store = RequestStore(path, flush_interval=0.01, retention=RetentionPolicy(days=2.5))
    store.start()
    deadline = time.monotonic() + 10
    while store.retention.requests_deleted < 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    store.stop()
    conn = sqlite3.connect(path)
    assert counts(conn) == (3, 3, 3)


def test_metadata_only_stores_no_bodies(tmp_path: Path) -> None:
    import httpx

    from tests.gateway_process import GatewayProcess, free_port
    from tests.standins.ollama_api import OllamaStandIn

    backend = OllamaStandIn().start_in_thread()
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""\
binds:
- port: {port}
  listeners:
  - routes:
    - backends:
      - ai: {{name: local, provider: {{openAI: {{}}}}, hostOverride: "127.0.0.1:{backend.port}"}}
config:
  readinessAddr: "off"
  database:
    url: sqlite://log.db
meterway:
  payloads:
    store: false
""")
    try:
        with GatewayProcess(config, [port]) as gateway:
            for stream in (False, True):
                reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10, json={
                    "model": "m", "stream": stream,
                    "messages": [{"role": "user", "content": "a very private zanzibar question"}]})
                assert reply.status_code == 200
            assert gateway.stop() == 0
    finally:
        backend.stop_in_thread()
    conn = sqlite3.connect(tmp_path / "log.db")
    assert counts(conn) == (2, 0, 0)
    assert conn.execute("select sum(input_tokens > 0) from requests").fetchone()[0] == 2
    assert b"zanzibar" not in (tmp_path / "log.db").read_bytes()
