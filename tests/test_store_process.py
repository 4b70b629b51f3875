"""The request log written by a child process: every row arrives, flow states become flow
files, secrets are removed from them, and a dead child costs no later row."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from mitmproxy import io as mitmio
from mitmproxy.test import tflow

from addons.logpayload import PayloadSource
from addons.logrow import flow_states
from addons.store_process import LogWriterProcess
from tests.test_store import make_row, wait_for

SECRET = "sk-backend-secret-0123456789"


def payload_for(i: int) -> PayloadSource:
    flow = tflow.tflow(resp=True)
    flow.request.path = f"/v1/chat/completions?n={i}"
    flow.request.content = b'{"messages": [{"role": "user", "content": "hello"}]}'
    # A secret that slipped into a body must not reach the stored flow file.
    flow.response.content = f'{{"note": "{SECRET}"}}'.encode()
    state, upstream, response = flow_states(flow, None, None)
    return PayloadSource(flow_state=state, client_snapshot=False, upstream_request=upstream, response=response,
                         streamed=None, streamed_size=0, streamed_truncated=False, reply_text="answer",
                         max_bytes=65536)


def stored(path: Path) -> list[tuple[str, bytes | None]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("select r.id, p.flow from requests r join payloads p on p.request_id = r.id "
                            "order by r.id").fetchall()


def test_rows_and_flow_files_arrive(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    writer = LogWriterProcess(path, secrets=(SECRET,))
    writer.start()
    # The schema exists as soon as start() returns, before the child has run.
    with sqlite3.connect(path) as conn:
        assert conn.execute("select count(*) from requests").fetchone() == (0,)
    for i in range(200):
        assert writer.submit(make_row(i), payload_for(i), (f"prompt {i}", "answer"))
    writer.stop(10)

    rows = stored(path)
    assert len(rows) == 200
    assert writer.stats.written == 200
    assert writer.stats.queued == 0
    flows = list(mitmio.FlowReader(io.BytesIO(rows[7][1])).stream())
    assert flows[0].request.path == "/v1/chat/completions?n=7"
    assert SECRET.encode() not in b"".join(blob for _, blob in rows)
    with sqlite3.connect(path) as conn:
        response, upstream = conn.execute("select response, upstream_request from payloads limit 1").fetchone()
        assert SECRET not in response
        assert "/v1/chat/completions?n=" in upstream
        assert conn.execute("select count(*) from requests_fts where requests_fts match 'hello'").fetchone() == (200,)


def test_dead_child_falls_back_to_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    writer = LogWriterProcess(path, flush_interval=0.02)
    writer.start()
    writer.submit(make_row(0), payload_for(0))
    assert wait_for(lambda: writer.stats.written == 1)
    writer._process.kill()
    writer._process.join(5)
    for i in range(1, 51):
        writer.submit(make_row(i), payload_for(i))
    writer.stop(10)

    assert len(stored(path)) == 51
    assert writer.stats.written == 51


def test_writer_applies_new_secrets(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    writer = LogWriterProcess(path, flush_interval=0.02)
    writer.start()
    writer.set_secrets((SECRET,))  # as a config reload does, after the child has started
    for i in range(5):
        writer.submit(make_row(i), payload_for(i))
    writer.stop(10)

    rows = stored(path)
    assert len(rows) == 5
    assert SECRET.encode() not in b"".join(blob for _, blob in rows)
