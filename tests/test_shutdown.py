"""Stopping a real gateway process: SIGTERM drains, SIGKILL never corrupts the request log."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway_process import GatewayProcess, free_port, wait_for_port
from tests.standins.ollama_api import OllamaStandIn

CONFIG = """\
binds:
- port: {port}
  listeners:
  - routes:
    - backends:
      - ai:
          name: local
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{backend_port}
config:
  readinessAddr: 127.0.0.1:{ready_port}
  database:
    url: sqlite://log.db
meterway:
  drainTimeout: {drain}
"""

UNBUFFERED = {"PYTHONUNBUFFERED": "1"}


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start(tmp_path: Path, backend: OllamaStandIn, drain: float) -> tuple[GatewayProcess, int, int]:
    port, ready_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, backend_port=backend.port, ready_port=ready_port, drain=drain))
    return GatewayProcess(config, [port], env=UNBUFFERED).start(), port, ready_port


def stream_in_thread(port: int, events: list[str], first_event: threading.Event) -> threading.Thread:
    def run() -> None:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                              timeout=30) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data:"):
                        events.append(line)
                        first_event.set()
        except httpx.HTTPError as error:  # a stream cut by the drain timeout ends here
            events.append(f"error: {type(error).__name__}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def slow_backend():
    backend = OllamaStandIn().start_in_thread()
    yield backend
    backend.stop_in_thread()


def test_sigterm_drains_slow_stream(tmp_path: Path, slow_backend: OllamaStandIn) -> None:
    slow_backend.chunks = 8
    slow_backend.delay_per_chunk = 0.25
    gateway, port, ready_port = start(tmp_path, slow_backend, drain=10)
    wait_for_port(ready_port)  # the probe starts after the listeners
    assert httpx.get(f"http://127.0.0.1:{ready_port}/healthz/ready").status_code == 200

    kept_alive = httpx.Client(timeout=10)
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    assert kept_alive.post(url, json=plain).status_code == 200

    events: list[str] = []
    first_event = threading.Event()
    thread = stream_in_thread(port, events, first_event)
    assert first_event.wait(10)
    gateway.process.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + 5
    while accepts(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not accepts(port), "the listener still accepts connections during the drain"
    refused = kept_alive.post(url, json=plain)
    assert refused.status_code == 503
    assert "shutting down" in refused.json()["error"]["message"]
    assert refused.headers["connection"] == "close"
    thread.join(15)
    assert events[-1] == "data: [DONE]"
    assert gateway.process.wait(15) == 0

    conn = sqlite3.connect(tmp_path / "log.db")
    rows = conn.execute("select outcome, stream, status from requests order by started_ms").fetchall()
    assert rows == [("ok", 0, 200), ("ok", 1, 200), ("gateway_error", None, 503)]
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    log = gateway.log()
    assert "drained in" in log
    assert "CancelledError" not in log


def test_drain_timeout_cuts_stream(tmp_path: Path, slow_backend: OllamaStandIn) -> None:
    slow_backend.chunks = 12
    slow_backend.delay_per_chunk = 0.25
    gateway, port, _ = start(tmp_path, slow_backend, drain=0.5)
    events: list[str] = []
    first_event = threading.Event()
    stream_in_thread(port, events, first_event)
    assert first_event.wait(10)
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGINT)
    assert gateway.process.wait(20) == 0
    # The cut stream's tokens are estimated, which loads a tiktoken encoding on first use.
    assert time.monotonic() - started < 15
    assert "drain timed out after 0.5 s" in gateway.log()
    conn = sqlite3.connect(tmp_path / "log.db")
    assert conn.execute("select outcome from requests where stream = 1").fetchall() == [("client_disconnected",)]


def test_sigkill_keeps_database_intact(tmp_path: Path, slow_backend: OllamaStandIn) -> None:
    gateway, port, _ = start(tmp_path, slow_backend, drain=10)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10) as client:
        for _ in range(10):
            assert client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body).status_code == 200
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait(10)

    conn = sqlite3.connect(tmp_path / "log.db")
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    written = conn.execute("select count(*) from requests").fetchone()[0]
    # Rows still queued in the writer may be lost; what was written is whole.
    assert 0 <= written <= 10
    for (payload,) in conn.execute("select client_request from payloads"):
        assert json.loads(payload)["method"] == "POST"
