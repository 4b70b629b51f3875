"""The request log on a disk that is full: traffic goes on, written rows stay, and the loss is counted.

The gateway runs under `prlimit --fsize`, so a write that would grow a file past the limit
fails with EFBIG. SQLite reports that as a disk I/O error, where a full disk gives "database
or disk is full". The writer treats both as failed writes: it retries them, then counts them.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_process import GatewayProcess, free_port, one_backend_config
from tests.standins.openai_api import OpenAIStandIn

# Big enough for the config, the gateway's output and many rows. The request log reaches it
# within SENT rows of the prompt below (after 150 to 220 rows here).
FILE_SIZE_LIMIT = 1_500_000
SENT = 250

class LimitedGateway(GatewayProcess):
    """`meterway run` with a maximum file size for every file it and its children write."""

    def command(self) -> list[str]:
        return ["prlimit", f"--fsize={FILE_SIZE_LIMIT}", *super().command()]


@pytest.fixture
def upstream() -> Iterator[OpenAIStandIn]:
    server = OpenAIStandIn()
    server.start_in_thread()
    yield server
    server.stop_in_thread()


def wait_for_rows_or_failure(database: Path, gateway: GatewayProcess, count: int, timeout: float = 10.0) -> None:
    """Wait until the log has `count` rows or the gateway reports a failed write."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "write failed" in gateway.log():
            return
        if database.exists():
            conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
            try:
                if conn.execute("select count(*) from requests").fetchone()[0] >= count:
                    return
            except sqlite3.Error:
                pass  # the schema may not be there yet
            finally:
                conn.close()
        time.sleep(0.02)
    raise AssertionError(f"neither row {count} nor a failed write within {timeout} s:\n{gateway.log()}")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit from util-linux")
def test_full_disk_keeps_traffic_and_rows(tmp_path: Path, upstream: OpenAIStandIn) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(one_backend_config(port, upstream.port, "sk-disk-backend-0000", free_port(), free_port()))
    gateway = LimitedGateway(config, [port]).start()
    try:
        statuses = []
        with httpx.Client(timeout=20) as client:
            for index in range(SENT):
                prompt = f"request {index}: " + "tell me about disks " * 60
                response = client.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
                statuses.append(response.status_code)
                # One row per write until the file is full, so the rows that fit are written
                # (a batch that does not fit fails whole).
                if "write failed" not in gateway.log():
                    wait_for_rows_or_failure(tmp_path / "log.db", gateway, index + 1)
        # The log failing never fails a request.
        assert statuses == [200] * SENT
        assert "write failed" in gateway.log(), gateway.log()
    finally:
        began = time.monotonic()
        status = gateway.stop(timeout=40)
    assert status == 0, gateway.log()
    # Shutdown gives up on the rows it cannot write instead of retrying for the full 30 s.
    assert time.monotonic() - began < 20

    log = gateway.log()
    # One warning for the outage, not one per row.
    assert log.count("write failed") == 1, log
    closed = re.search(r"request log closed: (\d+) rows written, (\d+) dropped, (\d+) failed", log)
    assert closed is not None, log
    written, dropped, failed = (int(value) for value in closed.groups())
    assert written + dropped + failed == SENT
    assert failed > 0

    # Every row written before the disk filled is still there, in a sound file.
    conn = sqlite3.connect(tmp_path / "log.db")
    try:
        assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
        assert conn.execute("select count(*) from requests").fetchone() == (written,)
        assert written >= 10
    finally:
        conn.close()
