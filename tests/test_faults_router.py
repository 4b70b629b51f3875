"""Router faults under a real gateway process, for failOpen and failClosed.

The gateway's extProc policy points at the stand-in router (`scripted` mode, keyword routing
unless a test installs a script). A request whose last message contains "code" is routed by the
router's `x-selected-model: qwen-coder` to the route `routed`; without the router's header it
falls through to the route `fallback`. Both go to the same healthy upstream, so the row's
route tells whether the router's answer was applied.

failOpen: the request continues unchanged to the fallback route and `router_outcome` says so.
failClosed: the client gets a JSON 500 (504 on a timeout) and the row is `gateway_error`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from tests.faulty_upstream import FaultyUpstream
from tests.faultkit import error_of, post_chat, unique_agent, wait_row
from tests.gateway_process import GatewayProcess, free_port
from tests.routerthread import ThreadedRouter
from tests.standins.extproc_server import END_STREAM, continue_reply

MESSAGE_TIMEOUT = 1.0
CODE_CHAT = '{"model": "m", "messages": [{"role": "user", "content": "write python code"}]}'

CONFIG = """\
policies:
- name:
    name: semantic-router
    namespace: default
  target:
    gateway:
      gatewayName: default
      gatewayNamespace: default
  phase: gateway
  policy:
    extProc:
      host: 127.0.0.1:{router_port}
      processingOptions:
        requestHeaderMode: send
        requestBodyMode: buffered
        responseHeaderMode: skip
        responseBodyMode: none
      failureMode: {failure_mode}
binds:
- port: {port}
  listeners:
  - routes:
    - name: routed
      matches:
      - headers:
        - name: x-selected-model
          value:
            exact: qwen-coder
      backends:
      - ai:
          name: upstream
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{upstream_port}
    - name: fallback
      backends:
      - ai:
          name: upstream
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{upstream_port}
config:
  database:
    url: sqlite://log.db
meterway:
  extProc:
    messageTimeout: {timeout}
"""


class Stack:
    def __init__(self, mode: str, base: str, db: Path, gateway: GatewayProcess, router: ThreadedRouter) -> None:
        self.mode = mode
        self.base = base
        self.db = db
        self.gateway = gateway
        self.router = router
        self.router_running = False

    def start_router(self) -> None:
        if not self.router_running:
            self.router.start()
            self.router_running = True

    def stop_router(self) -> None:
        if self.router_running:
            self.router.stop()
            self.router_running = False

    def send(self, case: str) -> tuple[httpx.Response, dict]:
        agent = unique_agent(f"{self.mode}-{case}")
        response = post_chat(self.base, agent, CODE_CHAT)
        return response, wait_row(self.db, agent)

    def script(self, **scripts: object) -> None:
        """Replace the router's scripts; no arguments restores keyword routing."""
        self.router.server.scripts = dict(scripts)  # type: ignore[arg-type]

    def assert_failed(self, response: httpx.Response, row: dict, *, timed_out: bool = False) -> None:
        """Check the failure handling of this stack's failure mode."""
        if self.mode == "failOpen":
            assert response.status_code == 200, response.text
            assert row["outcome"] == "ok"
            assert row["route"] == "fallback"
            assert row["router_outcome"] == ("timeout_failed_open" if timed_out else "failed_open")
        else:
            error = error_of(response, 504 if timed_out else 500)
            assert "router" in error["message"]
            assert "failOpen" in error["message"]  # names the fix
            assert row["outcome"] == "gateway_error"
            assert row["status"] == response.status_code
            assert row["router_outcome"] == ("timeout_failed_closed" if timed_out else "failed_closed")
            assert "router" in row["error"]

    def assert_routed(self) -> None:
        """Check that a request goes through the router and the route it picks."""
        deadline = time.monotonic() + 5
        while True:
            response, row = self.send("routed")
            if row["router_outcome"] == "ok" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert response.status_code == 200, response.text
        assert row["router_outcome"] == "ok"
        assert row["route"] == "routed"


@pytest.fixture(scope="module", params=["failOpen", "failClosed"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    mode = request.param
    folder = tmp_path_factory.mktemp(f"faults-router-{mode}")
    upstream = FaultyUpstream().start()
    router = ThreadedRouter(mode="scripted", port=free_port())  # not started: down at start
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, router_port=router.server.port, upstream_port=upstream.port,
                                    failure_mode=mode, timeout=MESSAGE_TIMEOUT))
    gateway = GatewayProcess(config, [port]).start()
    yield Stack(mode, f"http://127.0.0.1:{port}", folder / "log.db", gateway, router)
    gateway.stop()
    router.close()
    upstream.stop()


def test_router_down_then_restarted(stack: Stack) -> None:
    # The module's first test: the router has not been started since the gateway started.
    for _ in range(5):
        response, row = stack.send("down")
        stack.assert_failed(response, row)
    # An outage is one warning with a count of repeats, not a line per request.
    warnings = [line for line in stack.gateway.log().splitlines() if "127.0.0.1:" in line and "router" in line
                and "unreachable" in line]
    assert len(warnings) == 1, warnings
    stack.start_router()
    stack.assert_routed()  # recovered without restarting the gateway


def test_router_killed_mid_request(stack: Stack) -> None:
    stack.start_router()
    stack.assert_routed()

    async def slow_body(message: pb.ProcessingRequest, state: dict) -> pb.ProcessingResponse:
        await asyncio.sleep(0.6)
        return continue_reply("request_body")

    stack.script(request_body=slow_body)
    result: dict = {}

    def send() -> None:
        result["response"], result["row"] = stack.send("killed")

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.3)  # the router is now holding the body reply
    stack.stop_router()
    sender.join(15)
    stack.script()
    stack.assert_failed(result["response"], result["row"])

    stack.start_router()
    stack.assert_routed()


def test_router_close_does_not_delay_response(stack: Stack) -> None:
    stack.start_router()
    stack.assert_routed()
    stack.router.server.linger = 3.0
    try:
        agent = unique_agent(f"{stack.mode}-linger")
        started = time.monotonic()
        response = post_chat(stack.base, agent, CODE_CHAT)
        elapsed = time.monotonic() - started
    finally:
        stack.router.server.linger = 0.0
    assert response.status_code == 200, response.text
    # The stream closes after the response has gone; waiting for the router's end of stream
    # would take the 1 s close grace.
    assert elapsed < 0.8
    row = wait_row(stack.db, agent)
    assert row["router_outcome"] == "ok"
    assert row["route"] == "routed"


@pytest.mark.parametrize("reply", ["wrong-kind", "response-phase", "raise"])
def test_router_bad_reply(stack: Stack, reply: str) -> None:
    def wrong_kind(message: pb.ProcessingRequest, state: dict) -> object:
        if reply == "wrong-kind":
            return continue_reply("request_body")  # a body reply to the headers message
        if reply == "response-phase":
            return continue_reply("response_headers")
        raise RuntimeError("router bug")

    stack.start_router()
    stack.assert_routed()
    stack.script(request_headers=wrong_kind)
    try:
        response, row = stack.send(reply)
    finally:
        stack.script()
    stack.assert_failed(response, row)
    stack.assert_routed()


def test_router_clean_close_continues(stack: Stack) -> None:
    # As in Envoy, a router that closes the stream with gRPC status OK has finished
    # processing: the request goes on unchanged in either failure mode.
    stack.start_router()
    stack.script(request_headers=lambda message, state: END_STREAM)
    try:
        response, row = stack.send("end-stream")
    finally:
        stack.script()
    assert response.status_code == 200, response.text
    assert row["outcome"] == "ok"
    assert row["route"] == "fallback"
    stack.assert_routed()


def test_router_too_slow(stack: Stack) -> None:
    stack.start_router()
    stack.assert_routed()
    stack.router.server.delay = MESSAGE_TIMEOUT + 0.5
    started = time.monotonic()
    try:
        response, row = stack.send("slow")
    finally:
        stack.router.server.delay = 0.0
    assert time.monotonic() - started < MESSAGE_TIMEOUT + 3
    stack.assert_failed(response, row, timed_out=True)
    assert row["router_ms"] >= MESSAGE_TIMEOUT * 1000 * 0.9
    stack.assert_routed()
