"""Inspect and replay logged requests, end to end, as a person would.

A real gateway (`meterway run`) serves openai SDK traffic to an Ollama stand-in and to an
OpenAI stand-in that requires a backend key. One request fails upstream. The failed request
is picked from SQLite, exported with `meterway flow`, and opened with `meterway web` on a
changed config (the research route now has another name, backend and key). Through
mitmweb's HTTP API the test edits the prompt and replays it, then checks the new row, what
the upstream received, and that no exported file holds a key.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from mitmproxy import io as mitmio

from addons.store import RequestStore
from meterway import cli
from meterway.flows import decode_flows, select_flows
from tests.gateway_process import BIN, GatewayProcess, free_port, wait_for_port
from tests.standins.ollama_api import OllamaStandIn
from tests.standins.openai_api import OpenAIStandIn

CLIENT_KEY = "mw-client-alice-7c1f"
KEY_BEFORE = "sk-backend-before-51d2a9"
KEY_AFTER = "sk-backend-after-9e03b7"
SECRETS = (CLIENT_KEY, KEY_BEFORE, KEY_AFTER)

CONFIG = """\
binds:
- port: {port}
  listeners:
  - routes:
    - name: {research_route}
      matches:
      - headers:
        - name: x-team
          value:
            exact: research
      backends:
      - ai:
          name: {research_backend}
          provider:
            openAI: {{}}
        policies:
          backendAuth:
            key: ${key_variable}
    - name: local
      backends:
      - ai:
          name: ollama
          provider:
            openAI: {{}}
          hostOverride: localhost:11434
config:
  database:
    url: sqlite://log.db
  # Off, so this test never competes for the fixed default ports with another gateway.
  statsAddr: "off"
  readinessAddr: "off"
"""

PROMPT = "Summarise the quarterly report."
EDITED_PROMPT = "Summarise the quarterly report in three bullet points."


def write_config(path: Path, port: int, *, route: str, backend: str, key_variable: str) -> Path:
    path.write_text(CONFIG.format(port=port, research_route=route, research_backend=backend,
                                  key_variable=key_variable))
    return path


def query(db: Path, sql: str, params: tuple = ()) -> list[dict]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def wait_for_rows(db: Path, sql: str, params: tuple = (), count: int = 1, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        try:
            found = query(db, sql, params)
        except sqlite3.OperationalError:
            found = []
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"expected {count} rows for {sql!r} {params}, found {len(found)}")


def meterway(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed `meterway` command, as a person would."""
    return subprocess.run([str(BIN / "meterway"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def meterway_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Run the same command line in this process (starting Python per call is slow); return status, stderr."""
    status = cli.main(list(args))
    return status, capsys.readouterr().err


def flows_in(path: Path) -> list:
    return list(mitmio.FlowReader(io.BytesIO(path.read_bytes())).stream())


def assert_no_secret(path: Path) -> None:
    data = path.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in data, f"{path.name} contains a key"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory):
    """Run the gateway once, send four requests (one fails upstream), and stop it."""
    folder = tmp_path_factory.mktemp("replay")
    port = free_port()
    config = write_config(folder / "gateway.yaml", port, route="research", backend="openai",
                          key_variable="OPENAI_API_KEY")
    ollama = OllamaStandIn().start_in_thread()
    cloud = OpenAIStandIn(require_key=KEY_BEFORE).start_in_thread()
    upstreams = {"localhost:11434": ollama.url, "api.openai.com:443": cloud.url}
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=CLIENT_KEY, max_retries=0)
    research = {"x-team": "research"}
    messages = [{"role": "user", "content": PROMPT}]
    with GatewayProcess(config, [port], upstreams=upstreams, env={"OPENAI_API_KEY": KEY_BEFORE}):
        client.chat.completions.create(model="qwen2.5-coder:7b", messages=messages)
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers=research)
        cloud.next_error = (500, None, None)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers=research)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                extra_headers=research)
        streamed_text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        db = folder / "log.db"
        wait_for_rows(db, "select id from requests", count=4)
    state = {
        "folder": folder, "port": port, "db": db, "ollama": ollama, "cloud": cloud,
        "upstreams": upstreams, "streamed_text": streamed_text,
    }
    yield state
    ollama.stop_in_thread()
    cloud.stop_in_thread()


def failed_id(db: Path) -> str:
    rows = query(db, "select id from requests where outcome != 'ok'")
    assert len(rows) == 1
    return rows[0]["id"]


def streamed_id(db: Path) -> str:
    rows = query(db, "select id from requests where stream = 1 and outcome = 'ok'")
    assert len(rows) == 1
    return rows[0]["id"]


def test_logged_traffic_rows(logged) -> None:
    rows = query(logged["db"], "select route, status, outcome, stream, upstream from requests order by started_ms")
    assert [row["route"] for row in rows] == ["local", "research", "research", "research"]
    assert [row["status"] for row in rows] == [200, 200, 500, 200]
    assert [row["outcome"] for row in rows] == ["ok", "ok", "upstream_error", "ok"]
    assert rows[3]["stream"] == 1
    assert logged["streamed_text"]


def test_flow_exports_failed_request(logged) -> None:
    folder, db = logged["folder"], logged["db"]
    request_id = failed_id(db)
    result = meterway("flow", request_id, "--config", "gateway.yaml", cwd=folder)
    assert result.returncode == 0, result.stderr
    output = folder / f"{request_id}.mitm"
    assert output.is_file()
    flows = flows_in(output)
    assert len(flows) == 1
    assert flows[0].metadata["meterway"]["id"] == request_id
    assert flows[0].response.status_code == 500
    assert json.loads(flows[0].request.content)["messages"][0]["content"] == PROMPT
    assert flows[0].request.headers["authorization"] == "[redacted]"
    assert_no_secret(output)


def test_flow_where_selects_rows(logged, capsys) -> None:
    folder, db = logged["folder"], logged["db"]
    status, stderr = meterway_in_process(capsys, "flow", "--db", str(db), "--where", "outcome != 'ok'",
                                         "-o", str(folder / "failed.mitm"))
    assert status == 0, stderr
    flows = flows_in(folder / "failed.mitm")
    assert [flow.metadata["meterway"]["id"] for flow in flows] == [failed_id(db)]

    status, stderr = meterway_in_process(capsys, "flow", "--db", str(db), "--where", "1 = 1",
                                         "-o", str(folder / "all.mitm"))
    assert status == 0, stderr
    assert len(flows_in(folder / "all.mitm")) == 4
    assert_no_secret(folder / "all.mitm")


def test_flow_unknown_id_error(logged, capsys) -> None:
    status, stderr = meterway_in_process(capsys, "flow", "0000deadbeef", "--db", str(logged["db"]))
    assert status == 1
    assert "0000deadbeef" in stderr
    assert "list ids with" in stderr


def test_flow_bad_where_error(logged, capsys) -> None:
    status, stderr = meterway_in_process(capsys, "flow", "--db", str(logged["db"]), "--where", "no_such_column = 1")
    assert status == 1
    assert "no_such_column" in stderr


def test_flow_without_stored_flow_error(tmp_path: Path, capsys) -> None:
    # The real store writes a row without payloads, as the gateway does with payload storage off.
    db = tmp_path / "log.db"
    store = RequestStore(db)
    store.start()
    store.submit({"id": "018f0000000aabbccddeeff0", "started_ms": 1, "started_at": "1970-01-01T00:00:00.001Z",
                  "outcome": "ok"}, None)
    store.stop()
    status, stderr = meterway_in_process(capsys, "flow", "018f0000000aabbccddeeff0", "--db", str(db))
    assert status == 1
    assert "has no stored flow" in stderr
    assert "payloads.store" in stderr


class MitmWeb:
    """A client of mitmweb's HTTP API: token login, then the XSRF token on every change."""

    def __init__(self, url: str) -> None:
        base, _, query_string = url.partition("?")
        host = httpx.URL(base).host
        self.http = httpx.Client(base_url=base.rstrip("/"), timeout=10)
        response = self.http.get("/", params=dict([query_string.split("=", 1)]))
        assert response.status_code == 200
        assert any(name.startswith("mitmproxy-auth-") for name in self.http.cookies)
        # mitmweb checks XSRF with tornado's double submit: the X-XSRFToken header must match
        # the `_mitmproxy_xsrf` cookie. Its page gets the cookie over the websocket; an API
        # client may set its own random token, as tornado accepts a plain hex value.
        self.xsrf = secrets.token_hex(16)
        self.http.cookies.set("_mitmproxy_xsrf", self.xsrf, domain=host)

    def flows(self) -> list[dict]:
        response = self.http.get("/flows")
        assert response.status_code == 200
        return response.json()

    def edit_request_body(self, flow_id: str, text: str) -> None:
        response = self.http.put(f"/flows/{flow_id}", json={"request": {"content": text}},
                                 headers={"X-XSRFToken": self.xsrf})
        assert response.status_code == 200, response.text

    def replay(self, flow_id: str) -> None:
        response = self.http.post(f"/flows/{flow_id}/replay", headers={"X-XSRFToken": self.xsrf})
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def web(logged):
    """Start `meterway web` on the changed config with the failed and the streamed request open."""
    folder, db = logged["folder"], logged["db"]
    port = logged["port"]
    config = write_config(folder / "changed.yaml", port, route="research-eu", backend="openai-eu",
                          key_variable="OPENAI_EU_KEY")
    opened = [failed_id(db), streamed_id(db)]
    token_file = folder / "web-url.txt"
    log_path = folder / "web.log"
    command = [str(BIN / "meterway"), "web", str(config), "--open", *opened, "--token-file", str(token_file)]
    for source, target in logged["upstreams"].items():
        command += ["--upstream", f"{source}={target}"]
    env = {**os.environ, "OPENAI_EU_KEY": KEY_AFTER}

    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        wait_for_port(port, process=process)
        deadline = time.monotonic() + 20
        while not token_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert token_file.exists(), log_path.read_text()

        url = token_file.read_text().strip()
        client = MitmWeb(url)
        deadline = time.monotonic() + 10
        while len(client.flows()) < len(opened) and time.monotonic() < deadline:
            time.sleep(0.05)

        logged["cloud"].reset()
        logged["cloud"].require_key = KEY_AFTER
        yield {**logged, "client": client, "url": url, "opened": opened, "log_path": log_path,
               "token_file": token_file, "process": process}
    finally:
        process.terminate()
        process.wait(timeout=15)


def web_flow_id(client: MitmWeb, request_id: str, db: Path) -> str:
    """Find the mitmweb flow of a logged request: the stored flow keeps mitmproxy's flow id."""
    flow_id = decode_flows(select_flows(db, [request_id]))[0].id
    assert flow_id in {flow["id"] for flow in client.flows()}
    return flow_id


def test_web_opens_without_logging_again(web) -> None:
    assert len(web["client"].flows()) == 2
    assert len(query(web["db"], "select id from requests")) == 4
    assert web["token_file"].stat().st_mode & 0o777 == 0o600
    token = web["url"].split("token=", 1)[1]
    assert token not in web["log_path"].read_text()


def test_replay_edited_failed_request(web) -> None:
    client, folder, db, cloud = web["client"], web["folder"], web["db"], web["cloud"]
    original = failed_id(db)
    flow_id = web_flow_id(client, original, db)
    body = json.loads(flows_in(folder / f"{original}.mitm")[0].request.content)
    body["messages"][0]["content"] = EDITED_PROMPT
    client.edit_request_body(flow_id, json.dumps(body))
    client.replay(flow_id)

    rows = wait_for_rows(db, "select * from requests where replay_of = ?", (original,))
    row = rows[0]
    assert row["is_replay"] == 1
    assert row["id"] != original
    assert row["route"] == "research-eu"
    assert row["backend"] == "openai-eu"
    assert row["status"] == 200
    assert row["outcome"] == "ok"

    received = cloud.wait_for_requests(1)[-1]
    assert received.header("authorization") == f"Bearer {KEY_AFTER}"
    assert received.json["messages"][0]["content"] == EDITED_PROMPT
    assert all(CLIENT_KEY not in value for _, value in received.headers)

    # mitmweb keeps the flow's id across a replay; the response names the replay's new row.
    replayed = next(flow for flow in client.flows() if flow["id"] == flow_id)
    response_headers = {name.lower(): value for name, value in replayed["response"]["headers"]}
    assert response_headers["x-meterway-request-id"] == row["id"]

    # A second replay of the same mitmweb flow gets its own row, still pointing at the original.
    client.replay(flow_id)
    rows = wait_for_rows(db, "select id, replay_of from requests where replay_of = ?", (original,), count=2)
    assert len({r["id"] for r in rows}) == 2
    assert {r["replay_of"] for r in rows} == {original}


def test_replay_streamed_request(web) -> None:
    client, folder, db, cloud = web["client"], web["folder"], web["db"], web["cloud"]
    original = streamed_id(db)
    flow_id = web_flow_id(client, original, db)
    client.replay(flow_id)

    row = wait_for_rows(db, "select * from requests where replay_of = ?", (original,))[0]
    assert row["is_replay"] == 1
    assert row["stream"] == 1
    assert row["route"] == "research-eu"
    assert row["status"] == 200
    assert row["outcome"] == "ok"
    assert row["output_tokens"] > 0
    received = [r for r in cloud.received if r.json and r.json.get("stream")]
    assert received[-1].header("authorization") == f"Bearer {KEY_AFTER}"


def test_replay_rows_export_without_keys(web, capsys) -> None:
    folder, db = web["folder"], web["db"]
    status, stderr = meterway_in_process(capsys, "flow", "--db", str(db), "--where", "is_replay = 1",
                                         "-o", str(folder / "replays.mitm"))
    assert status == 0, stderr
    flows = flows_in(folder / "replays.mitm")
    assert len(flows) == 3
    assert all(flow.metadata["meterway"]["is_replay"] == 1 for flow in flows)
    for path in folder.glob("*.mitm"):
        assert_no_secret(path)
