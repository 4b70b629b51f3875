"""Bad client input under a real gateway process: a JSON error that names the problem and
the fix, one `gateway_error` row, nothing sent upstream, and the gateway keeps serving.

Port A serves only `/v1/chat/completions`, port B only `/v1/messages`; neither has a
fallback route, so other paths and the wrong port get the gateway's 404.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.faulty_upstream import FaultyUpstream
from tests.faultkit import CHAT, error_of, post_chat, unique_agent, wait_row
from tests.gateway_process import GatewayProcess, free_port

MAX_BUFFER = 4096

CONFIG = """\
binds:
- port: {port_a}
  listeners:
  - routes:
    - name: chat
      matches:
      - path:
          pathPrefix: /v1/chat/completions
      backends:
      - ai:
          name: upstream
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{upstream_port}
- port: {port_b}
  listeners:
  - routes:
    - name: messages
      matches:
      - path:
          pathPrefix: /v1/messages
      backends:
      - ai:
          name: upstream
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{upstream_port}
frontendPolicies:
  http:
    maxBufferSize: {max_buffer}
config:
  database:
    url: sqlite://log.db
"""


class Stack:
    def __init__(self, port_a: int, port_b: int, db: Path, gateway: GatewayProcess, upstream: FaultyUpstream) -> None:
        self.port_a = port_a
        self.port_b = port_b
        self.base = f"http://127.0.0.1:{port_a}"
        self.db = db
        self.gateway = gateway
        self.upstream = upstream

    def rejected(self, case: str, body: bytes | str, status: int = 400, **kwargs) -> tuple[dict, dict]:
        """Send a bad request; check the JSON error, that nothing went upstream, and the row."""
        agent = unique_agent(case)
        before = len(self.upstream.requests)
        response = post_chat(kwargs.pop("base", self.base), agent, body, **kwargs)
        error = error_of(response, status)
        row = wait_row(self.db, agent)
        assert row["outcome"] == "gateway_error"
        assert row["status"] == status
        assert row["error"] == error["message"]
        assert len(self.upstream.requests) == before, "a rejected request reached the upstream"
        self.assert_serving()
        return error, row

    def assert_serving(self) -> None:
        agent = unique_agent("after")
        response = post_chat(self.base, agent)
        assert response.status_code == 200, self.gateway.log()[-2000:]
        assert wait_row(self.db, agent)["outcome"] == "ok"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("bad-input")
    upstream = FaultyUpstream().start()
    port_a, port_b = free_port(), free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(port_a=port_a, port_b=port_b, upstream_port=upstream.port,
                                    max_buffer=MAX_BUFFER))
    gateway = GatewayProcess(config, [port_a, port_b]).start()
    yield Stack(port_a, port_b, folder / "log.db", gateway, upstream)
    gateway.stop()
    upstream.stop()


@pytest.mark.parametrize("body", ['{"model": "m", "messages": [}', '{"model": "m", "messages": [{"role": "us'])
def test_malformed_json_is_400(stack: Stack, body: str) -> None:
    error, _ = stack.rejected("malformed", body)
    assert "not valid JSON" in error["message"]
    assert "line 1 column" in error["message"]
    assert "send a JSON object" in error["message"]


@pytest.mark.parametrize("body, kind", [("[1, 2]", "list"), ('"hi"', "str"), ("42", "int"), ("null", "NoneType")])
def test_non_object_body_is_400(stack: Stack, body: str, kind: str) -> None:
    error, _ = stack.rejected("non-object", body)
    assert f"JSON {kind}, not an object" in error["message"]


@pytest.mark.parametrize("model", ["42", "[\"a\"]", "{\"name\": \"m\"}", "true"])
def test_model_not_string_is_400(stack: Stack, model: str) -> None:
    error, _ = stack.rejected("model", '{"model": %s, "messages": []}' % model)
    assert error["param"] == "model"
    assert "`model` must be a string" in error["message"]


def test_non_utf8_body_is_400(stack: Stack) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9"}]}'
    error, _ = stack.rejected("latin1", body)
    assert "not valid UTF-8" in error["message"]
    assert f"byte {body.index(b'\xe9')}" in error["message"]


def test_json_as_text_plain_is_served(stack: Stack) -> None:
    # The gateway reads a JSON body whatever its Content-Type and forwards the header as
    # it came, so the provider decides.
    agent = unique_agent("text-plain")
    response = post_chat(stack.base, agent, CHAT, **{"content-type": "text/plain"})
    assert response.status_code == 200
    row = wait_row(stack.db, agent)
    assert row["outcome"] == "ok"
    assert row["requested_model"] == "gpt-4o-mini"


def test_body_over_limit_is_413(stack: Stack) -> None:
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * MAX_BUFFER}]})
    error, _ = stack.rejected("too-large", big, status=413)
    assert "maxBufferSize" in error["message"]
    assert str(MAX_BUFFER) in error["message"]


def test_chunked_body_over_limit_is_413(stack: Stack) -> None:
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * MAX_BUFFER}]}).encode()

    def chunks():
        for start in range(0, len(big), 1000):
            yield big[start:start + 1000]

    agent = unique_agent("chunked")
    before = len(stack.upstream.requests)
    response = httpx.post(f"{stack.base}/v1/chat/completions", content=chunks(), timeout=10,
                          headers={"content-type": "application/json", "user-agent": agent})
    assert "content-length" not in response.request.headers  # really sent chunked
    error = error_of(response, 413)
    assert "maxBufferSize" in error["message"]
    row = wait_row(stack.db, agent)
    assert row["outcome"] == "gateway_error"
    assert row["status"] == 413
    assert len(stack.upstream.requests) == before
    stack.assert_serving()


def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send bytes that an HTTP library would refuse to send; return the status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                header_end = data.index(b"\r\n\r\n")
                lengths = [line for line in data[:header_end].split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if lengths and len(data) >= header_end + 4 + int(lengths[0].split(b":")[1]):
                    break
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data[data.index(b"\r\n\r\n") + 4:])


def test_bare_cr_in_header_is_400(stack: Stack) -> None:
    agent = unique_agent("bare-cr")
    body = CHAT.encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: {agent}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n").encode()
    head += b"x-trace: abc\rdef\r\n\r\n"
    status, payload = raw_request(stack.port_a, head, body)
    assert status == 400
    assert "x-trace" in payload["error"]["message"]
    assert "control character" in payload["error"]["message"]
    row = wait_row(stack.db, agent)
    assert row["outcome"] == "gateway_error"
    assert row["status"] == 400
    stack.assert_serving()


def test_huge_header_is_400(stack: Stack) -> None:
    error, row = stack.rejected("huge-header", CHAT, **{"x-huge": "v" * 40_000})
    assert "x-huge" in error["message"]
    assert "40000 bytes" in error["message"]
    assert "v" * 100 not in error["message"]  # the value itself is not echoed


def test_unknown_path_is_404(stack: Stack) -> None:
    error, row = stack.rejected("unknown-path", CHAT, status=404, path="/v2/foo")
    assert "/v2/foo" in error["message"]
    assert error["code"] == "no_route"


def test_wrong_listener_is_404(stack: Stack) -> None:
    # Port B serves only /v1/messages: a chat request there names the path and the port.
    error, row = stack.rejected("wrong-port", CHAT, status=404, base=f"http://127.0.0.1:{stack.port_b}")
    assert "/v1/chat/completions" in error["message"]
    assert str(stack.port_b) in error["message"]
    assert row["bind"] == stack.port_b


def test_rows_match_requests(stack: Stack) -> None:
    # Every request of this module (rejected or served) wrote exactly one row.
    time.sleep(0.3)
    conn = __import__("sqlite3").connect(stack.db)
    try:
        duplicates = conn.execute(
            "select user_agent, count(*) from requests group by user_agent having count(*) > 1").fetchall()
    finally:
        conn.close()
    assert duplicates == []
