"""Upstream faults under a real gateway process: each gets a clear response, exactly one row,
and the gateway keeps serving.

The upstream is `tests.faulty_upstream`, a raw asyncio server that misbehaves on request
(`x-fault` header). Routes pick the upstream by the `x-route` header: the faulty server over
plain HTTP, the same plain server behind an `https://` mapping, a TLS server whose CA the
gateway does not trust, and a port where nothing listens.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.faulty_upstream import PROVIDER_MESSAGE, TRICKLE_EVENTS, TRICKLE_GAP, FaultyUpstream
from tests.faultkit import count_rows, error_of, post_chat, unique_agent, wait_row
from tests.gateway_process import GatewayProcess, free_port
from tests.standins.tls import TestCA

UPSTREAM_TIMEOUT = 1.5

CONFIG = """\
binds:
- port: {port}
  listeners:
  - routes:
    - name: plain-tls
      matches:
      - headers:
        - name: x-route
          value:
            exact: plain-tls
      backends:
      - ai:
          name: plain-behind-https
          provider:
            openAI: {{}}
          hostOverride: plain-tls.test:443
    - name: untrusted
      matches:
      - headers:
        - name: x-route
          value:
            exact: untrusted
      backends:
      - ai:
          name: untrusted-ca
          provider:
            openAI: {{}}
          hostOverride: untrusted.test:443
    - name: dead
      matches:
      - headers:
        - name: x-route
          value:
            exact: dead
      backends:
      - ai:
          name: nowhere
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{dead_port}
    - name: faulty
      backends:
      - ai:
          name: faulty
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{faulty_port}
config:
  database:
    url: sqlite://log.db
meterway:
  upstreamTimeout: {timeout}
"""


def closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"something listens on {port}"
    return port


class Stack:
    def __init__(self, base: str, db: Path, gateway: GatewayProcess, upstream: FaultyUpstream) -> None:
        self.base = base
        self.db = db
        self.gateway = gateway
        self.upstream = upstream

    def send(self, case: str, fault: str = "ok", route: str = "faulty", **kwargs) -> tuple[httpx.Response, dict]:
        """Send one request with a fault and return the response and its row."""
        agent = unique_agent(case)
        response = post_chat(self.base, agent, **kwargs, **{"x-fault": fault, "x-route": route})
        return response, wait_row(self.db, agent)

    def assert_serving(self) -> None:
        """Check that a normal request still gets a normal response."""
        response, row = self.send("after", "ok")
        assert response.status_code == 200, self.gateway.log()[-2000:]
        assert response.json()["choices"][0]["message"]["content"] == "fine"
        assert row["outcome"] == "ok"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("faults-upstream")
    ca = TestCA()
    plain = FaultyUpstream().start()
    untrusted = FaultyUpstream(ssl_context=ca.server_context(["untrusted.test"])).start()
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, dead_port=closed_port(), faulty_port=plain.port,
                                    timeout=UPSTREAM_TIMEOUT))
    upstreams = {"plain-tls.test:443": f"https://127.0.0.1:{plain.port}",
                 "untrusted.test:443": untrusted.url}
    gateway = GatewayProcess(config, [port], upstreams=upstreams).start()
    yield Stack(f"http://127.0.0.1:{port}", folder / "log.db", gateway, plain)
    gateway.stop()
    plain.stop()
    untrusted.stop()
    ca.cleanup()


def test_refused_connection_is_502(stack: Stack) -> None:
    response, row = stack.send("refused", route="dead")
    error = error_of(response, 502)
    assert "running" in error["message"]
    assert row["outcome"] == "upstream_unreachable"
    assert row["status"] == 502
    assert "refused" in row["error"].lower() or "connect" in row["error"].lower()
    stack.assert_serving()


def test_reset_mid_body_is_502(stack: Stack) -> None:
    response, row = stack.send("reset-body", "reset-body")
    error = error_of(response, 502)
    assert "complete" in error["message"]
    assert "hostOverride" not in error["message"]  # the backend was reached, so the hint is not about reaching it
    assert row["outcome"] == "upstream_error"
    assert row["status"] == 502  # mitmproxy's error page went out, not the provider's 200
    assert row["error"]
    stack.assert_serving()


def test_reset_mid_stream_cuts_stream(stack: Stack) -> None:
    agent = unique_agent("reset-stream")
    body = '{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{stack.base}/v1/chat/completions", content=body, timeout=10,
                          headers={"user-agent": agent, "x-fault": "reset-stream",
                                   "content-type": "application/json"}) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                received += chunk
    assert b'"content": "a"' in received  # events before the reset reached the client
    row = wait_row(stack.db, agent)
    assert row["outcome"] == "upstream_error"
    assert row["status"] == 200  # the headers had already gone out
    assert row["stream"] == 1
    assert "complete" in row["error"]
    stack.assert_serving()


def test_stall_times_out_with_504(stack: Stack) -> None:
    started = time.monotonic()
    response, row = stack.send("stall", "stall")
    elapsed = time.monotonic() - started
    error = error_of(response, 504)
    assert "upstreamTimeout" in error["message"]
    assert f"{UPSTREAM_TIMEOUT:g}" in error["message"]
    assert UPSTREAM_TIMEOUT <= elapsed < UPSTREAM_TIMEOUT + 5
    assert row["outcome"] == "timeout"
    assert row["status"] == 504
    assert "upstreamTimeout" in row["error"]
    stack.assert_serving()


def test_slow_trickle_completes(stack: Stack) -> None:
    # The whole stream takes longer than the upstream timeout, but headers come at once:
    # the timeout bounds the wait for the response to start, not its length.
    assert TRICKLE_EVENTS * TRICKLE_GAP > UPSTREAM_TIMEOUT
    agent = unique_agent("trickle")
    body = '{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    response = post_chat(stack.base, agent, body, **{"x-fault": "trickle"})
    assert response.status_code == 200
    text = response.text
    for index in range(TRICKLE_EVENTS):
        assert f"t{index} " in text
    assert text.rstrip().endswith("data: [DONE]")
    row = wait_row(stack.db, agent)
    assert row["outcome"] == "ok"
    assert row["output_tokens"] == TRICKLE_EVENTS
    assert row["duration_ms"] >= (TRICKLE_EVENTS - 1) * TRICKLE_GAP * 1000


def test_plain_server_behind_https_is_502(stack: Stack) -> None:
    response, row = stack.send("plain-tls", route="plain-tls")
    error = error_of(response, 502)
    assert "TLS" in error["message"]
    assert row["outcome"] == "upstream_unreachable"
    assert row["status"] == 502
    assert row["upstream"] == f"127.0.0.1:{stack.upstream.port}"
    stack.assert_serving()


def test_untrusted_certificate_is_502(stack: Stack) -> None:
    response, row = stack.send("untrusted", route="untrusted")
    error = error_of(response, 502)
    assert "certificate" in error["message"].lower()
    assert "trusted-ca" in error["message"]
    assert row["outcome"] == "upstream_unreachable"
    assert "certificate" in row["error"].lower()
    stack.assert_serving()


def test_invalid_response_is_502(stack: Stack) -> None:
    response, row = stack.send("invalid", "invalid")
    error = error_of(response, 502)
    assert "parse" in error["message"].lower()
    assert row["outcome"] == "upstream_error"
    assert row["status"] == 502
    stack.assert_serving()


def test_truncated_body_is_502(stack: Stack) -> None:
    response, row = stack.send("truncated", "truncated")
    error = error_of(response, 502)
    assert "expected" in error["message"]
    assert row["outcome"] == "upstream_error"
    assert row["status"] == 502
    stack.assert_serving()


def test_429_passes_retry_after(stack: Stack) -> None:
    response, row = stack.send("429", "429")
    error = error_of(response, 429)
    assert response.headers["retry-after"] == "7"
    assert error["code"] == "rate_limit_exceeded"
    assert row["outcome"] == "upstream_error"
    assert row["status"] == 429
    assert "Rate limit reached" in row["error"]


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_body_passes_through(stack: Stack, status: int) -> None:
    response, row = stack.send(f"{status}", str(status))
    error = error_of(response, status)
    assert error["message"] == PROVIDER_MESSAGE
    assert row["outcome"] == "upstream_error"
    assert row["status"] == status
    assert PROVIDER_MESSAGE in row["error"]
    stack.assert_serving()


def test_each_fault_has_one_row(stack: Stack) -> None:
    for fault in ("reset-body", "invalid", "truncated", "500"):
        agent = unique_agent(f"once-{fault}")
        post_chat(stack.base, agent, **{"x-fault": fault})
        wait_row(stack.db, agent)
        time.sleep(0.2)  # a second, late row would land by now
        assert count_rows(stack.db, agent) == 1
