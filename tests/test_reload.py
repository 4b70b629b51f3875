"""Config reload under a real gateway process: edits take effect, broken edits are rejected."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from addons.reload import ConfigWatcher
from tests.gateway_process import GatewayProcess, free_port
from tests.standins.ollama_api import OllamaStandIn

CONFIG = """\
binds:
- port: {port}
  listeners:
  - routes:
    - name: main
      backends:
      - ai:
          name: {name}
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{backend_port}
config:
  database:
    url: sqlite://{db}
"""

# The gateway log is read while the process runs, so it must not sit in a buffer.
UNBUFFERED = {"PYTHONUNBUFFERED": "1"}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def write_config(path: Path, text: str) -> None:
    """Save as editors do: a new file renamed over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return conn.execute("select count(*) from requests").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def post(port: int) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY, timeout=10)


@pytest.fixture
def backends():
    first, second = OllamaStandIn().start_in_thread(), OllamaStandIn().start_in_thread()
    yield first, second
    first.stop_in_thread()
    second.stop_in_thread()


def test_reload_moves_traffic_and_rejects_broken(tmp_path: Path, backends) -> None:
    first, second = backends
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, name="first", backend_port=first.port, db="log.db"))
    with GatewayProcess(config, [port], env=UNBUFFERED) as gateway:
        assert post(port).status_code == 200
        assert len(first.received) == 1

        write_config(config, CONFIG.format(port=port, name="second", backend_port=second.port, db="log.db"))
        wait_until(lambda: "loaded gateway config" in gateway.log().split("watching", 1)[-1])
        assert post(port).status_code == 200
        assert len(second.received) == 1
        assert len(first.received) == 1

        write_config(config, CONFIG.format(port=port, name="second", backend_port=second.port, db="log.db")
                     + "unknownTopLevel: 1\n")
        wait_until(lambda: "not reloaded" in gateway.log())
        log = gateway.log()
        assert "unknownTopLevel" in log
        assert "previous config stays in force" in log
        assert post(port).status_code == 200
        assert len(second.received) == 2

        assert gateway.stop() == 0
    wait_until(lambda: count_rows(tmp_path / "log.db") == 3)


def test_reload_changes_port_and_database(tmp_path: Path, backends) -> None:
    first, _ = backends
    port, new_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, name="first", backend_port=first.port, db="one.db"))
    with GatewayProcess(config, [port], env=UNBUFFERED) as gateway:
        assert post(port).status_code == 200
        wait_until(lambda: count_rows(tmp_path / "one.db") == 1)

        write_config(config, CONFIG.format(port=new_port, name="first", backend_port=first.port, db="two.db"))
        wait_until(lambda: _accepts(new_port))
        wait_until(lambda: not _accepts(port))
        assert post(new_port).status_code == 200
        wait_until(lambda: count_rows(tmp_path / "two.db") == 1)
        assert count_rows(tmp_path / "one.db") == 1
        assert gateway.stop() == 0


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_watcher_debounces_writes(tmp_path: Path) -> None:
    path = tmp_path / "watched.yaml"
    path.write_text("a: 1\n")
    calls: list[str] = []
    watcher = ConfigWatcher(path, lambda: calls.append(path.read_text()), poll_interval=0.02, debounce=0.2)
    watcher.start()
    await asyncio.sleep(0.05)
    for step in range(5):  # one save that arrives in several writes
        path.write_text(f"a: {step}\n" + "b: 2\n" * step)
        await asyncio.sleep(0.03)
    await asyncio.sleep(0.6)
    watcher.stop()
    assert calls == ["a: 4\n" + "b: 2\n" * 4]


async def test_watcher_survives_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "watched.yaml"
    path.write_text("a: 1\n")
    calls: list[str] = []
    watcher = ConfigWatcher(path, lambda: calls.append(path.read_text()), poll_interval=0.02, debounce=0.05)
    watcher.start()
    await asyncio.sleep(0.05)
    path.unlink()
    await asyncio.sleep(0.2)
    assert calls == []
    path.write_text("a: 2\n")
    await asyncio.sleep(0.3)
    watcher.stop()
    assert calls == ["a: 2\n"]
