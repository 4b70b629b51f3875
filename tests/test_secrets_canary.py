"""No secret anywhere: run every request path with canary keys, then search all that was written.

The client key and the backend keys are unique strings. After plain, streamed, failed,
router-fail-open and translated Anthropic requests, a flow export and the UI pages, no file
in the test folder (database, -wal, log, .mitm) and no UI page may contain any of them.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
from datasette.app import Datasette

from tests.gateway_process import GatewayProcess, free_port
from tests.standins.anthropic_api import AnthropicStandIn
from tests.standins.openai_api import OpenAIStandIn

CLIENT_KEY = "canary-client-7f3a9c1e"
OPENAI_KEY = "canary-openai-51d0b2aa"
ANTHROPIC_KEY = "canary-anthropic-e94c07d3"
CANARIES = (CLIENT_KEY, OPENAI_KEY, ANTHROPIC_KEY)

CONFIG = """\
policies:
- name: {{name: router, namespace: default}}
  target: {{gateway: {{gatewayName: default, gatewayNamespace: default}}}}
  phase: gateway
  policy:
    extProc:
      host: 127.0.0.1:{dead_port}
      failureMode: failOpen
binds:
- port: {port}
  listeners:
  - policies:
      apiKey:
        mode: strict
        keys:
        - key: {client_key}
          metadata: {{name: canary-client}}
    routes:
    - name: claude
      matches:
      - headers:
        - name: x-route
          value: {{exact: anthropic}}
      policies:
        backendAuth: {{key: {anthropic_key}}}
      backends:
      - ai: {{name: anthropic, provider: {{anthropic: {{}}}}, hostOverride: "127.0.0.1:{anthropic_port}"}}
    - name: gpt
      policies:
        backendAuth: {{key: {openai_key}}}
      backends:
      - ai: {{name: openai, provider: {{openAI: {{}}}}, hostOverride: "127.0.0.1:{openai_port}"}}
config:
  readinessAddr: "off"
  database:
    url: sqlite://log.db
"""

MESSAGES = [{"role": "user", "content": "hello there"}]


def send_everything(port: int, openai_standin: OpenAIStandIn) -> list[str]:
    """Send one request of each kind; return the request ids."""
    ids = []
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=CLIENT_KEY, max_retries=0)
    plain = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    ids.append(plain.headers["x-meterway-request-id"])
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    openai_standin.next_error = (500, None, None)
    failed = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES},
                        headers={"x-api-key": CLIENT_KEY}, timeout=10)
    assert failed.status_code == 500
    ids.append(failed.headers["x-meterway-request-id"])

    translated = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions?key={CLIENT_KEY}",
                            json={"model": "claude-sonnet-4-5", "messages": MESSAGES, "max_tokens": 20},
                            headers={"x-route": "anthropic"}, timeout=10)
    assert translated.status_code == 200, translated.text
    ids.append(translated.headers["x-meterway-request-id"])

    # A wrong key is not a canary, but the error path must not echo the right one either.
    wrong = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES},
                       headers={"authorization": "Bearer wrong"}, timeout=10)
    assert wrong.status_code == 401
    return ids


def leaks_in(data: bytes) -> list[str]:
    return [canary for canary in CANARIES if canary.encode() in data]


async def test_no_canary_written_anywhere(tmp_path: Path) -> None:
    openai_standin = OpenAIStandIn(require_key=OPENAI_KEY).start_in_thread()
    anthropic_standin = AnthropicStandIn(require_key=ANTHROPIC_KEY).start_in_thread()
    try:
        port, dead_port = free_port(), free_port()
        config = tmp_path / "gateway.yaml"
        config.write_text(CONFIG.format(
            port=port, dead_port=dead_port, client_key=CLIENT_KEY, openai_key=OPENAI_KEY,
            anthropic_key=ANTHROPIC_KEY, openai_port=openai_standin.port, anthropic_port=anthropic_standin.port,
        ))
        with GatewayProcess(config, [port], env={"PYTHONUNBUFFERED": "1"}) as gateway:
            ids = send_everything(port, openai_standin)
            # Copy the live files while the gateway runs, so the -wal is searched too.
            time.sleep(0.6)
            snapshot = {path.name: path.read_bytes() for path in tmp_path.glob("log.db*")}
            assert gateway.stop() == 0
    finally:
        openai_standin.stop_in_thread()
        anthropic_standin.stop_in_thread()
    # The backends did get their keys: the canaries were really in play.
    assert openai_standin.received and anthropic_standin.received
    assert "log.db-wal" in snapshot

    conn = sqlite3.connect(tmp_path / "log.db")
    rows = conn.execute("select client, router_outcome, stream from requests where status != 401").fetchall()
    conn.close()
    assert len(rows) == 4
    assert {row[0] for row in rows} == {"canary-client"}
    assert {row[1] for row in rows} == {"failed_open"}
    assert sorted(row[2] for row in rows) == [0, 0, 0, 1]

    exported = tmp_path / "export.mitm"
    result = subprocess.run([sys.executable, "-m", "meterway", "flow", *ids, "--db", str(tmp_path / "log.db"),
                             "-o", str(exported)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert exported.stat().st_size > 0

    datasette = Datasette([str(tmp_path / "log.db")])
    await datasette.invoke_startup()
    pages = ["/-/meterway", "/log/requests", "/log/payloads", "/log/requests?_search=hello"]
    pages += [f"/-/meterway/request/{request_id}" for request_id in ids]
    for page in pages:
        response = await datasette.client.get(page)
        assert response.status_code == 200, page
        assert leaks_in(response.content) == [], page

    for name, data in snapshot.items():
        assert leaks_in(data) == [], f"live {name}"
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "gateway.yaml":
            assert leaks_in(path.read_bytes()) == [], path.name
