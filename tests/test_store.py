"""Tests of the SQLite request log: schema, writer thread, rollups and failure handling."""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from addons.store import (
    RequestStore,
    StoreError,
    latency_bounds,
    open_for_writing,
    open_readonly,
    percentile_from_hist,
    status_class,
)
from addons.store_hist import HistBlobSum, add_hist_blobs, hist_from_blob, hist_to_blob
from addons.store_rollup import DIMENSIONS, SUM_COLUMNS, SUMMARY_DIMENSIONS, RollupBatch
from addons.store_schema import REQUEST_COLUMNS, SCHEMA_VERSION, ensure_schema
from addons.store_write import prepare, write_batch
from bench import gen_requests
from bench.gen_requests import TrafficGenerator, make_timestamps

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_row(i: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"req-{i:06d}",
        "started_ms": BASE_MS + i * 1000,
        "duration_ms": 100.0 + i,
        "status": 200,
        "outcome": "ok",
        "provider": "openai",
        "requested_model": "MoM",
        "routed_model": "gpt-4o",
        "route": "3000/0/1/openai",
        "input_tokens": 10,
        "output_tokens": 5,
        "total_tokens": 15,
    }
    row.update(overrides)
    return row


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def count_rows(path: Path, table: str = "requests") -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[RequestStore]:
    store = RequestStore(db_path, flush_interval=0.02)
    store.start()
    yield store
    store.stop()


def schema_sql(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_schema_created(db_path: Path) -> None:
    open_for_writing(db_path).close()
    with sqlite3.connect(db_path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = [row[1] for row in conn.execute("PRAGMA table_info(requests)")]
        indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(requests)")}
        buckets = conn.execute("SELECT idx, upper_ms FROM latency_buckets ORDER BY idx").fetchall()
        version = conn.execute("SELECT value FROM meterway_meta WHERE key = 'schema_version'").fetchone()
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    for table in ("requests", "payloads", "rollup_hour", "latency_buckets", "requests_fts", "meterway_meta"):
        assert table in tables
    assert columns == ["rowid", *REQUEST_COLUMNS]
    assert indexes["idx_requests_id"] == 1
    for name in ("idx_requests_started_ms", "idx_requests_started_provider", "idx_requests_replay_of",
                 "idx_requests_cost_usd", "idx_requests_duration_ms"):
        assert name in indexes
    assert {"rollup_dimension_hour", "rollup_latency_hour"} <= tables
    assert [upper for _, upper in buckets[:-1]] == latency_bounds()
    assert buckets[-1][1] is None
    assert version == (str(SCHEMA_VERSION),)
    assert journal == "wal"


def test_schema_idempotent(db_path: Path) -> None:
    open_for_writing(db_path).close()
    first = schema_sql(db_path)
    conn = open_for_writing(db_path)
    assert ensure_schema(conn) == SCHEMA_VERSION
    conn.close()
    assert schema_sql(db_path) == first
    assert count_rows(db_path, "latency_buckets") == len(latency_bounds()) + 1


def test_migration_from_version_one(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.executescript(
            """
            CREATE TABLE requests (id TEXT NOT NULL, started_ms INTEGER NOT NULL, status INTEGER,
                outcome TEXT, provider TEXT, requested_model TEXT, routed_model TEXT,
                duration_ms REAL, input_tokens INTEGER, cost_usd REAL);
            CREATE TABLE payloads (request_id TEXT PRIMARY KEY, response TEXT);
            CREATE TABLE meterway_meta (key TEXT PRIMARY KEY, value TEXT);
            INSERT INTO meterway_meta VALUES ('schema_version', '1');
            """
        )
        conn.executemany(
            "INSERT INTO requests VALUES (?, ?, 200, 'ok', 'openai', 'MoM', 'gpt-4o', ?, 7, 0.5)",
            [(f"old-{i}", BASE_MS + i * 600_000, 50.0 * (i + 1)) for i in range(12)],
        )

    store = RequestStore(db_path, flush_interval=0.02)
    store.start()
    assert store.submit(make_row(1, is_replay=1, replay_of="old-3"))
    store.stop()

    with sqlite3.connect(db_path) as conn:
        version = conn.execute("SELECT value FROM meterway_meta WHERE key = 'schema_version'").fetchone()[0]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
        payload_columns = {row[1] for row in conn.execute("PRAGMA table_info(payloads)")}
        old_rollup = conn.execute(
            "SELECT sum(requests), sum(input_tokens), sum(cost_usd) FROM rollup_hour "
            "WHERE bucket_ms < ?", (BASE_MS + 7_200_000,)
        ).fetchone()
        replay = conn.execute("SELECT is_replay, replay_of FROM requests WHERE id = 'req-000001'").fetchone()
        old_replay_flags = conn.execute("SELECT DISTINCT is_replay FROM requests WHERE id LIKE 'old-%'").fetchall()
    assert version == str(SCHEMA_VERSION)
    assert set(REQUEST_COLUMNS) <= columns
    assert {"flow", "body_flags", "truncated"} <= payload_columns
    # The 12 old rows and the new one all fall in the first two hours.
    assert old_rollup[0] == 13
    assert old_rollup[1] == 12 * 7 + 10
    assert old_rollup[2] == pytest.approx(6.0)
    assert replay == (1, "old-3")
    assert old_replay_flags == [(0,)]


def test_newer_schema_left_intact(db_path: Path) -> None:
    open_for_writing(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meterway_meta SET value = '99' WHERE key = 'schema_version'")
        conn.execute("ALTER TABLE requests ADD COLUMN region TEXT")
        conn.execute("CREATE TABLE future_things (x)")

    store = RequestStore(db_path, flush_interval=0.02)
    store.start()
    store.submit(make_row(1))
    store.stop()

    with sqlite3.connect(db_path) as conn:
        version = conn.execute("SELECT value FROM meterway_meta WHERE key = 'schema_version'").fetchone()[0]
        row = conn.execute("SELECT id, region FROM requests").fetchall()
        future = conn.execute("SELECT name FROM sqlite_master WHERE name = 'future_things'").fetchone()
    assert version == "99"
    assert row == [("req-000001", None)]
    assert future == ("future_things",)
    assert store.stats.written == 1


def test_submit_stores_every_column(store: RequestStore, db_path: Path) -> None:
    row: dict[str, Any] = {}
    for n, (name, kind) in enumerate(REQUEST_COLUMNS.items()):
        row[name] = {str: f"{name}-value", int: 1000 + n, float: n + 0.25}[kind]
    row.update(started_ms=BASE_MS + 1234, started_at="2026-01-01T00:00:01.234Z", status=503,
               stream=True, is_replay=False, router_headers={"x-selected-model": "gpt-4o"})
    assert store.submit(row)
    assert wait_for(lambda: store.stats.written == 1)

    conn = open_readonly(db_path)
    cursor = conn.execute("SELECT * FROM requests")
    names = [d[0] for d in cursor.description]
    stored = dict(zip(names, cursor.fetchone()))
    conn.close()
    for name in REQUEST_COLUMNS:
        expected = row[name]
        if name == "router_headers":
            expected = '{"x-selected-model":"gpt-4o"}'
        elif isinstance(expected, bool):
            expected = int(expected)
        assert stored[name] == expected, name


def test_missing_fields_filled(store: RequestStore, db_path: Path) -> None:
    store.submit({"started_ms": BASE_MS + 5, "outcome": "ok", "local": True})
    store.submit({"id": "no-time", "outcome": "ok"})
    assert wait_for(lambda: store.stats.written == 2)
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT id, started_ms, started_at, is_replay FROM requests ORDER BY rowid").fetchall()
    assert rows[0][2] == "2026-01-01T00:00:00.005Z"
    assert len(rows[0][0]) == 32
    assert rows[1][0] == "no-time"
    assert abs(rows[1][1] - time.time() * 1000) < 60_000
    assert rows[1][3] == 0


def test_payload_and_fts(store: RequestStore, db_path: Path) -> None:
    payload = {"client_request": '{"method": "POST"}', "upstream_request": b'{"model": "gpt-4o"}',
               "response": {"status": 200, "body": "hi"}, "request_bytes": 120, "response_bytes": 4096,
               "truncated": True, "body_flags": ["bad_gzip"], "flow": b"\x00\x01flow"}
    store.submit(make_row(1), payload, ("how do I rotate a wombat", "carefully, with gloves"))
    store.submit(make_row(2), None, ("unrelated prompt", "unrelated answer"))
    store.submit(make_row(3))
    assert wait_for(lambda: store.stats.written == 3)

    conn = open_readonly(db_path)
    found = conn.execute(
        "SELECT r.id FROM requests_fts f JOIN requests r ON r.rowid = f.rowid WHERE requests_fts MATCH ?",
        ("wombat",),
    ).fetchall()
    answer_hit = conn.execute(
        "SELECT r.id FROM requests_fts f JOIN requests r ON r.rowid = f.rowid WHERE requests_fts MATCH ?",
        ("answer: gloves",),
    ).fetchall()
    stored = conn.execute("SELECT * FROM payloads").fetchall()
    conn.close()
    assert found == [("req-000001",)]
    assert answer_hit == [("req-000001",)]
    assert stored == [("req-000001", '{"method": "POST"}', '{"model": "gpt-4o"}', '{"status":200,"body":"hi"}',
                       120, 4096, 1, '["bad_gzip"]', b"\x00\x01flow")]


def test_bad_and_duplicate_rows(store: RequestStore, db_path: Path) -> None:
    store.submit(make_row(1, input_tokens="ten"))
    store.submit(make_row(2))
    store.submit(make_row(2, status=500))
    store.submit(make_row(3, started_at=object()))
    assert wait_for(lambda: store.stats.written + store.stats.failed == 3)
    assert store.stats.written == 1
    assert store.stats.failed == 2
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT id, status FROM requests").fetchall()
        rollup = conn.execute("SELECT sum(requests) FROM rollup_hour").fetchone()[0]
    assert rows == [("req-000002", 200)]
    assert rollup == 1


def random_rows(rng: random.Random, count: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        duration = None if rng.random() < 0.05 else rng.lognormvariate(6.0, 1.5)
        rows.append({
            "id": f"rnd-{i:06d}",
            "started_ms": BASE_MS + rng.randrange(10 * 3_600_000),
            "provider": rng.choice(["openai", "gcp.gemini", "anthropic", None]),
            "requested_model": rng.choice(["MoM", "gpt-4o", None]),
            "routed_model": rng.choice(["gpt-4o", "qwen2.5-coder:7b", None]),
            "route": rng.choice(["a", "b", None]),
            "client": rng.choice(["laptop", None]),
            "status": rng.choice([200, 200, 200, 429, 502, None]),
            "outcome": rng.choice(["ok", "ok", "ok", "upstream_error", "timeout", None]),
            "input_tokens": rng.choice([None, rng.randrange(5000)]),
            "output_tokens": rng.choice([None, rng.randrange(900)]),
            "cached_input_tokens": rng.choice([None, 0, rng.randrange(100)]),
            "reasoning_tokens": rng.choice([None, rng.randrange(50)]),
            "total_tokens": rng.randrange(6000),
            "cost_usd": rng.choice([None, rng.random() / 100]),
            "cost_status": rng.choice(["priced", "unpriced", "local", "no_usage"]),
            "duration_ms": duration,
            "ttft_ms": None if duration is None or rng.random() < 0.3 else duration * rng.random(),
        })
    return rows


# The rollup as plain SQL over `requests`, written independently of the writer's Python.
EXPECTED_ROLLUP_SQL = """
SELECT started_ms - started_ms % 3600000 AS bucket_ms,
       coalesce(provider, '') AS provider, coalesce(requested_model, '') AS requested_model,
       coalesce(routed_model, requested_model, '') AS model, coalesce(route, '') AS route,
       coalesce(client, '') AS client,
       CASE WHEN status BETWEEN 100 AND 599 THEN (status / 100) || 'xx' ELSE 'none' END AS status_class,
       coalesce(outcome, '') AS outcome,
       count(*) AS requests, sum(coalesce(outcome, '') != 'ok') AS errors,
       total(input_tokens) AS input_tokens, total(output_tokens) AS output_tokens,
       total(cached_input_tokens) AS cached_input_tokens, total(reasoning_tokens) AS reasoning_tokens,
       total(total_tokens) AS total_tokens, total(cost_usd) AS cost_usd,
       sum(cost_status = 'unpriced') AS unpriced, total(duration_ms) AS duration_ms_sum,
       total(ttft_ms) AS ttft_ms_sum, count(ttft_ms) AS ttft_count
FROM requests GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""

EXPECTED_HIST_SQL = """
SELECT r.started_ms - r.started_ms % 3600000, coalesce(r.provider, ''), coalesce(r.requested_model, ''),
       coalesce(r.routed_model, r.requested_model, ''), coalesce(r.route, ''), coalesce(r.client, ''),
       CASE WHEN r.status BETWEEN 100 AND 599 THEN (r.status / 100) || 'xx' ELSE 'none' END,
       coalesce(r.outcome, ''),
       coalesce((SELECT min(idx) FROM latency_buckets WHERE upper_ms >= r.duration_ms),
                (SELECT max(idx) FROM latency_buckets)) AS idx
FROM requests r WHERE r.duration_ms IS NOT NULL
"""


def assert_rollup_matches_requests(path: Path) -> int:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    key_names = ("bucket_ms", *DIMENSIONS)
    expected = {tuple(row[k] for k in key_names): row for row in conn.execute(EXPECTED_ROLLUP_SQL)}
    actual = {tuple(row[k] for k in key_names): row for row in conn.execute("SELECT * FROM rollup_hour")}
    hists: dict[tuple[Any, ...], dict[int, int]] = {}
    for *key, idx in conn.execute(EXPECTED_HIST_SQL):
        counts = hists.setdefault(tuple(key), {})
        counts[idx] = counts.get(idx, 0) + 1
    conn.close()

    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        got = actual[key]
        for name in SUM_COLUMNS:
            assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-9), (key, name)
        stored = json.loads(got["latency_hist"])
        assert {i: c for i, c in enumerate(stored) if c} == hists.get(key, {}), key
    assert_narrow_match_rollup(path)
    return len(expected)


def assert_narrow_match_rollup(path: Path) -> None:
    """Check both narrow tables against `rollup_hour` and, independently, against `requests`."""
    conn = sqlite3.connect(path)
    sums = ", ".join(f"total({name})" for name in SUM_COLUMNS)
    narrow_latency = {(b, m, p): hist_from_blob(blob).tolist() for b, m, p, blob in
                      conn.execute("SELECT bucket_ms, model, provider, latency_hist FROM rollup_latency_hour")}
    expected_latency: dict[tuple[Any, ...], list[int]] = {}
    for bucket, model, provider, hist in conn.execute(
            "SELECT bucket_ms, model, provider, latency_hist FROM rollup_hour"):
        total = expected_latency.setdefault((bucket, model, provider), [])
        for i, count in enumerate(json.loads(hist)):
            total.extend([0] * (i + 1 - len(total)))
            total[i] += count
    expected_latency = {key: hist for key, hist in expected_latency.items() if any(hist)}
    # Independently of rollup_hour: durations per hour, model and provider straight from requests.
    raw_counts = dict(((b, m, p), n) for b, m, p, n in conn.execute(
        "SELECT started_ms - started_ms % 3600000, coalesce(routed_model, requested_model, ''), "
        "coalesce(provider, ''), count(duration_ms) FROM requests GROUP BY 1, 2, 3"))
    by_dimension = {name: {(b, v): rest for b, v, *rest in conn.execute(
        f"SELECT bucket_ms, value, {sums} FROM rollup_dimension_hour WHERE dimension = ? "
        "GROUP BY bucket_ms, value", [name])} for name in SUMMARY_DIMENSIONS}
    from_rollup = {name: {(b, v): rest for b, v, *rest in conn.execute(
        f"SELECT bucket_ms, {name}, {sums} FROM rollup_hour GROUP BY bucket_ms, {name}")}
        for name in SUMMARY_DIMENSIONS}
    hourly_requests = dict(conn.execute(
        "SELECT started_ms - started_ms % 3600000, count(*) FROM requests GROUP BY 1"))
    dimensions = {d for (d,) in conn.execute("SELECT DISTINCT dimension FROM rollup_dimension_hour")}
    conn.close()

    assert narrow_latency.keys() == expected_latency.keys()
    for key, hist in expected_latency.items():
        assert narrow_latency[key] == hist, key
        assert sum(hist) == raw_counts[key], key
    assert dimensions <= set(SUMMARY_DIMENSIONS)
    for name in SUMMARY_DIMENSIONS:
        assert by_dimension[name].keys() == from_rollup[name].keys(), name
        for key, want in from_rollup[name].items():
            assert by_dimension[name][key] == pytest.approx(want, rel=1e-9, abs=1e-9), (name, key)
        # Every request counts once under each dimension, so each adds up to the hour's requests.
        per_hour: dict[int, float] = {}
        for (bucket, _), values in by_dimension[name].items():
            per_hour[bucket] = per_hour.get(bucket, 0) + values[0]
        assert per_hour == hourly_requests, name


def test_rollup_matches_sql_aggregates(db_path: Path) -> None:
    rows = random_rows(random.Random(20260101), 1200)
    store = RequestStore(db_path, batch_max=97, flush_interval=0.01)
    store.start()
    for row in rows:
        store.submit(row)
    store.stop()
    assert store.stats.written == 1200
    groups = assert_rollup_matches_requests(db_path)
    assert groups > 100


def test_generator_rollup_equals_writer(tmp_path: Path) -> None:
    """The bench's bulk path and the writer thread build the same rollup from the same rows."""
    rng_rows = TrafficGenerator(5, 0.3)
    stamps = make_timestamps(rng_rows.rng, 1200, 2, BASE_MS)
    drawn = [rng_rows.row(stamp) for stamp in stamps]

    store = RequestStore(tmp_path / "writer.db", batch_max=300, flush_interval=0.01)
    store.start()
    for row, payload, fts in drawn:
        store.submit(row, payload, fts)
    store.stop()

    bulk_path = tmp_path / "bulk.db"
    conn = open_for_writing(bulk_path)
    bounds = latency_bounds()
    prepared = [prepare(row, payload, fts, BASE_MS) for row, payload, fts in drawn]
    write_batch(conn, prepared[:700], bounds)
    write_batch(conn, prepared[700:], bounds)
    conn.close()

    query = "SELECT * FROM rollup_hour ORDER BY " + ", ".join(("bucket_ms", *DIMENSIONS))
    with sqlite3.connect(tmp_path / "writer.db") as a, sqlite3.connect(bulk_path) as b:
        from_writer = a.execute(query).fetchall()
        from_bulk = b.execute(query).fetchall()
        fts_counts = (a.execute("SELECT count(*) FROM requests_fts").fetchone(),
                      b.execute("SELECT count(*) FROM requests_fts").fetchone())
    assert len(from_writer) == len(from_bulk)
    key_width = 1 + len(DIMENSIONS)
    for left, right in zip(from_writer, from_bulk):
        assert left[:key_width] == right[:key_width]
        # Sums may differ in the last bits because the batches add floats in another order.
        assert left[key_width:-1] == pytest.approx(right[key_width:-1], rel=1e-9)
        assert left[-1] == right[-1]
    assert fts_counts[0] == fts_counts[1]
    assert assert_rollup_matches_requests(bulk_path) == len(from_bulk)
    dimension_query = "SELECT * FROM rollup_dimension_hour ORDER BY bucket_ms, dimension, value"
    latency_query = "SELECT * FROM rollup_latency_hour ORDER BY bucket_ms, model, provider"
    with sqlite3.connect(tmp_path / "writer.db") as a, sqlite3.connect(bulk_path) as b:
        dimension_rows = (a.execute(dimension_query).fetchall(), b.execute(dimension_query).fetchall())
        latency_rows = (a.execute(latency_query).fetchall(), b.execute(latency_query).fetchall())
    assert len(dimension_rows[0]) == len(dimension_rows[1]) > 0
    for left, right in zip(*dimension_rows):
        assert left[:3] == right[:3]
        assert left[3:] == pytest.approx(right[3:], rel=1e-9)
    assert latency_rows[0] == latency_rows[1]
    assert len(latency_rows[0]) > 0


def test_migration_backfills_narrow_tables(db_path: Path) -> None:
    """A version-3 file gets narrow tables equal to what the writer would have kept."""
    store = RequestStore(db_path, batch_max=97, flush_interval=0.01)
    store.start()
    for row in random_rows(random.Random(4), 600):
        store.submit(row)
    store.stop()
    query = ("SELECT * FROM rollup_dimension_hour ORDER BY bucket_ms, dimension, value",
             "SELECT * FROM rollup_latency_hour ORDER BY bucket_ms, model, provider")
    with sqlite3.connect(db_path) as conn:
        kept = [conn.execute(q).fetchall() for q in query]
        # Turn the file back into what schema version 3 wrote.
        conn.execute("DROP TABLE rollup_dimension_hour")
        conn.execute("DROP TABLE rollup_latency_hour")
        conn.execute("UPDATE meterway_meta SET value = '3' WHERE key = 'schema_version'")

    open_for_writing(db_path).close()
    with sqlite3.connect(db_path) as conn:
        backfilled = [conn.execute(q).fetchall() for q in query]
        version = conn.execute("SELECT value FROM meterway_meta WHERE key = 'schema_version'").fetchone()[0]
    assert version == str(SCHEMA_VERSION)
    assert len(backfilled[0]) == len(kept[0]) > 100
    for left, right in zip(kept[0], backfilled[0]):
        assert left[:3] == right[:3]
        assert left[3:] == pytest.approx(right[3:], rel=1e-9, abs=1e-9)
    assert backfilled[1] == kept[1]
    assert_narrow_match_rollup(db_path)


def test_hist_blob_round_trip_and_sum() -> None:
    hist = [0, 3, 0, 70_000, 2**31, 0, 0]
    blob = hist_to_blob(hist)
    assert len(blob) == 5 * 4  # trailing zero buckets are left out
    assert blob[4:8] == (3).to_bytes(4, "little")
    assert hist_from_blob(blob).tolist() == hist[:5]
    assert hist_from_blob(None).tolist() == []
    assert hist_to_blob([0, 0]) == b""
    assert hist_from_blob(add_hist_blobs(blob, hist_to_blob([1, 1, 1, 1, 1, 1]))).tolist() == [1, 4, 1, 70_001, 2**31 + 1, 1]
    with pytest.raises(ValueError, match="7 bytes"):
        hist_from_blob(b"\x00" * 7)

    conn = sqlite3.connect(":memory:")
    conn.create_aggregate("hist_sum", 1, HistBlobSum)
    conn.execute("CREATE TABLE t (h BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(hist_to_blob([1, 2]),), (None,), (hist_to_blob([0, 0, 5]),)])
    assert json.loads(conn.execute("SELECT hist_sum(h) FROM t").fetchone()[0]) == [1, 2, 5]
    assert conn.execute("SELECT hist_sum(h) FROM t WHERE h IS NULL").fetchone()[0] == "[]"
    # Python's sqlite3 returns NULL for an aggregate over no rows without calling finalize.
    assert conn.execute("SELECT hist_sum(h) FROM t WHERE 0").fetchone()[0] is None


def test_generator_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "synthetic.db"
    assert gen_requests.main([str(path), "--rows", "1500", "--days", "2", "--payload-fraction", "0.5"]) == 0
    assert "rows/s" in capsys.readouterr().out
    with sqlite3.connect(path) as conn:
        outcomes = dict(conn.execute("SELECT outcome, count(*) FROM requests GROUP BY outcome").fetchall())
        payloads = conn.execute("SELECT count(*) FROM payloads").fetchone()[0]
        searchable = conn.execute("SELECT count(*) FROM requests_fts WHERE requests_fts MATCH 'python'").fetchone()[0]
        span_ms = conn.execute("SELECT max(started_ms) - min(started_ms) FROM requests").fetchone()[0]
    assert sum(outcomes.values()) == 1500
    assert set(outcomes) == {"ok", "upstream_error", "gateway_error", "upstream_unreachable", "timeout",
                             "client_disconnected", "router_response"}
    assert 500 < payloads < 1000
    assert searchable > 0
    assert 24 * 3_600_000 < span_ms <= 2 * 86_400_000
    assert_rollup_matches_requests(path)


@functools.cache
def lognormal_sample() -> tuple[list[float], list[int]]:
    rng = random.Random(99)
    durations = [rng.lognormvariate(math.log(800), 1.0) for _ in range(20000)]
    batch = RollupBatch(latency_bounds())
    for duration in durations:
        batch.add({"started_ms": BASE_MS, "outcome": "ok", "duration_ms": duration})
    return durations, json.loads(batch.values()[0][-1])


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_percentile_from_hist_close_to_exact(q: float) -> None:
    durations, hist = lognormal_sample()
    exact = sorted(durations)[math.ceil(q * len(durations)) - 1]
    estimate = percentile_from_hist(hist, q)
    assert estimate is not None
    assert abs(estimate - exact) / exact < 0.03


def test_percentile_edge_cases() -> None:
    bounds = latency_bounds()
    assert percentile_from_hist([], 0.5) is None
    assert percentile_from_hist([0, 0, 0], 0.5) is None
    overflow = [0] * len(bounds) + [10]
    assert percentile_from_hist(overflow, 0.99) == bounds[-1]
    assert percentile_from_hist([4], 0.5) == pytest.approx(bounds[0] / 2)
    with pytest.raises(ValueError, match="pass 0.95 for p95"):
        percentile_from_hist([1], 95)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(None, "none"), (101, "1xx"), (200, "2xx"), (304, "3xx"), (429, "4xx"), (599, "5xx"), (0, "none"), (700, "none")],
)
def test_status_class(status: int | None, expected: str) -> None:
    assert status_class(status) == expected


def test_full_queue_drops_and_counts(db_path: Path) -> None:
    store = RequestStore(db_path, queue_max=5)
    results = [store.submit(make_row(i)) for i in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert store.stats.dropped == 3
    assert store.stats.queued == 5
    store.start()
    store.stop()
    assert store.stats.written == 5
    assert store.submit(make_row(99)) is False
    assert store.stats.dropped == 4


def test_missing_folder_raises(tmp_path: Path) -> None:
    store = RequestStore(tmp_path / "absent" / "log.db")
    with pytest.raises(StoreError, match="does not exist"):
        store.start()


def test_locked_database_written_after_release(db_path: Path) -> None:
    open_for_writing(db_path).close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    store = RequestStore(db_path, flush_interval=0.02, busy_timeout=0.1, retry_for=20.0)
    store.start()
    try:
        for i in range(50):
            store.submit(make_row(i))
        time.sleep(0.8)
        assert store.stats.written == 0
        holder.execute("COMMIT")
        assert wait_for(lambda: store.stats.written == 50)
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        store.stop()
    assert store.stats.failed == 0
    assert count_rows(db_path) == 50


def set_read_only(path: Path, read_only: bool) -> None:
    if os.geteuid() != 0:
        path.chmod(0o444 if read_only else 0o644)
        return
    # root ignores file modes, so use the immutable attribute (ext4, xfs, btrfs).
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr, so a read-only file cannot be made")
    done = subprocess.run(["chattr", "+i" if read_only else "-i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr failed on {path} ({done.stderr.strip()}), so a read-only file cannot be made")


def test_read_only_file_fails_then_recovers(db_path: Path) -> None:
    open_for_writing(db_path).close()
    set_read_only(db_path, True)
    store = RequestStore(db_path, flush_interval=0.02, retry_for=0.3)
    try:
        store.start()
        for i in range(5):
            store.submit(make_row(i))
        assert wait_for(lambda: store.stats.failed == 5)
        assert store.stats.written == 0
    finally:
        set_read_only(db_path, False)
    for i in range(5, 10):
        store.submit(make_row(i))
    assert wait_for(lambda: store.stats.written == 5)
    store.stop()
    assert count_rows(db_path) == 5


def test_deleted_file_recovered(db_path: Path, store: RequestStore) -> None:
    for i in range(10):
        store.submit(make_row(i))
    assert wait_for(lambda: store.stats.written == 10)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    for i in range(10, 20):
        store.submit(make_row(i))
    assert wait_for(lambda: store.stats.written == 20)
    store.stop()
    assert count_rows(db_path) == 10
    assert count_rows(db_path, "rollup_hour") == 1
    assert store.stats.failed == 0


def test_stop_flushes(db_path: Path) -> None:
    store = RequestStore(db_path, batch_max=10_000, flush_interval=30.0)
    store.start()
    for i in range(300):
        store.submit(make_row(i), {"response": "x"}, ("p", "a"))
    began = time.monotonic()
    store.stop(timeout=5.0)
    assert time.monotonic() - began < 5.0
    assert store.stats.written == 300
    assert count_rows(db_path) == 300
    assert count_rows(db_path, "payloads") == 300


def write_from_process(path: str, worker: int, count: int) -> None:
    store = RequestStore(Path(path), batch_max=40, flush_interval=0.005)
    store.start()
    for i in range(count):
        store.submit(make_row(worker * 100_000 + i))
        if i % 200 == 0:
            time.sleep(0.01)  # interleave the two writers' transactions
    store.stop(timeout=30.0)
    stats = store.stats
    os._exit(0 if (stats.written, stats.dropped, stats.failed) == (count, 0, 0) else 1)


def test_two_processes_lose_no_row(db_path: Path) -> None:
    open_for_writing(db_path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_from_process, args=(str(db_path), n, 800)) for n in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert count_rows(db_path) == 1600
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT sum(requests) FROM rollup_hour").fetchone()[0] == 1600


def test_writer_rate(db_path: Path) -> None:
    store = RequestStore(db_path, queue_max=50_000)
    rows = [make_row(i) for i in range(5_000)]
    store.start()
    began = time.perf_counter()
    for row in rows:
        store.submit(row)
    store.stop(timeout=60.0)
    elapsed = time.perf_counter() - began
    assert store.stats.written == 5_000
    print(f"\nrequest log writer: {5_000 / elapsed:,.0f} rows/s (5,000 rows, no payloads)")
