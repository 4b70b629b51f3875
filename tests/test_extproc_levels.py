"""A route's `extProc` policy beside the gateway-phase one, under a real gateway process.

One gateway, three stand-in routers (`scripted` mode) and one upstream. The gateway-phase
router sets `x-gateway-router` on every request; routes are chosen by `x-case`:
- `edit`: its router sets `x-route-router`, rewrites the body's model to `alias-me`, and the
  route's `modelAliases` then map `alias-me` to `aliased-model` (aliases come after it);
- `open` / `closed`: its router's port has nothing listening, failOpen and failClosed;
- `block`: its router sends an immediate 403 response.
What the upstream got is read from the request log's `payloads.upstream_request`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from tests.faultkit import unique_agent, wait_row
from tests.faulty_upstream import FaultyUpstream
from tests.gateway_process import GatewayProcess, free_port
from tests.routerthread import ThreadedRouter
from tests.standins.extproc_server import continue_reply, header, header_value

CHAT = {"model": "client-model", "messages": [{"role": "user", "content": "hello"}]}
OPTIONS = """
          processingOptions:
            requestHeaderMode: send
            requestBodyMode: buffered
            responseHeaderMode: send
            responseBodyMode: none"""


def _route(name: str, router_port: int, upstream_port: int, failure_mode: str = "failClosed") -> str:
    return f"""
    - name: {name}
      matches:
      - headers:
        - name: x-case
          value:
            exact: {name}
      policies:
        ai:
          modelAliases:
            alias-me: aliased-model
        extProc:
          host: 127.0.0.1:{router_port}
          failureMode: {failure_mode}{OPTIONS}
      backends:
      - ai:
          name: upstream
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{upstream_port}"""


def _config(port: int, gateway_router: int, edit_router: int, block_router: int, dead: int, upstream: int) -> str:
    routes = "".join([
        _route("edit", edit_router, upstream),
        _route("open", dead, upstream, "failOpen"),
        _route("closed", dead, upstream, "failClosed"),
        _route("block", block_router, upstream),
    ])
    return f"""\
policies:
- name:
    name: gateway-router
    namespace: default
  target:
    gateway:
      gatewayName: default
      gatewayNamespace: default
  phase: gateway
  policy:
    extProc:
      host: 127.0.0.1:{gateway_router}
      failureMode: failClosed{OPTIONS.replace(chr(10) + '    ', chr(10))}
binds:
- port: {port}
  listeners:
  - routes:{routes}
config:
  database:
    url: sqlite://log.db
meterway:
  extProc:
    messageTimeout: 2
"""


class Stack:
    def __init__(self, folder: Path) -> None:
        self.calls: list[tuple[str, str]] = []  # (router, phase) in the order the routers were called
        self.upstream = FaultyUpstream().start()
        self.gateway_router = ThreadedRouter(mode="scripted", scripts=self._gateway_scripts()).start()
        self.edit_router = ThreadedRouter(mode="scripted", scripts=self._edit_scripts()).start()
        self.block_router = ThreadedRouter(mode="scripted", scripts=self._block_scripts()).start()
        self.port = free_port()
        self.db = folder / "log.db"
        config = folder / "gateway.yaml"
        config.write_text(_config(self.port, self.gateway_router.server.port, self.edit_router.server.port,
                                  self.block_router.server.port, free_port(), self.upstream.port))
        self.gateway = GatewayProcess(config, [self.port]).start()

    def _note(self, router: str, phase: str) -> None:
        self.calls.append((router, phase))

    def _gateway_scripts(self) -> dict:
        def headers(message: pb.ProcessingRequest, state: dict) -> pb.ProcessingResponse:
            self._note("gateway", "request_headers")
            return continue_reply("request_headers", pb.HeaderMutation(set_headers=[header("x-gateway-router", "1")]))

        def response_headers(message: pb.ProcessingRequest, state: dict) -> pb.ProcessingResponse:
            self._note("gateway", "response_headers")
            return continue_reply("response_headers", pb.HeaderMutation(set_headers=[header("x-order", "gateway")]))

        return {"request_headers": headers, "response_headers": response_headers}

    def _edit_scripts(self) -> dict:
        def headers(message: pb.ProcessingRequest, state: dict) -> pb.ProcessingResponse:
            self._note("route", "request_headers")
            state["saw_gateway_header"] = header_value(message.request_headers, "x-gateway-router")
            return continue_reply("request_headers", pb.HeaderMutation(set_headers=[header("x-route-router", "1")]))

        def body(message: pb.ProcessingRequest, state: dict) -> pb.ProcessingResponse:
            self._note("route", "request_body")
            payload = json.loads(message.request_body.body)
            payload["model"] = "alias-me"
            new_body = json.dumps(payload).encode()
            mutation = pb.HeaderMutation(set_headers=[header("content-length", str(len(new_body)))])
            return continue_reply("request_body", mutation, new_body)

        def response_headers(message: pb.ProcessingRequest, state: dict) -> pb.ProcessingResponse:
            self._note("route", "response_headers")
            return continue_reply("response_headers", pb.HeaderMutation(set_headers=[header("x-order", "route")]))

        return {"request_headers": headers, "request_body": body, "response_headers": response_headers}

    def _block_scripts(self) -> dict:
        def headers(message: pb.ProcessingRequest, state: dict) -> pb.ProcessingResponse:
            self._note("block", "request_headers")
            return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=403), body=b'{"error": {"message": "blocked by route"}}'))

        return {"request_headers": headers}

    def send(self, case: str) -> tuple[httpx.Response, dict]:
        agent = unique_agent(f"levels-{case}")
        response = httpx.post(f"http://127.0.0.1:{self.port}/v1/chat/completions", json=CHAT, timeout=15,
                              headers={"x-case": case, "user-agent": agent, "authorization": "Bearer test"})
        return response, wait_row(self.db, agent)

    def upstream_request(self, request_id: str) -> dict:
        deadline = time.monotonic() + 5
        while True:
            conn = sqlite3.connect(self.db)
            try:
                found = conn.execute("select upstream_request from payloads where request_id = ?",
                                     [request_id]).fetchone()
            finally:
                conn.close()
            if found and found[0]:
                return json.loads(found[0])
            assert time.monotonic() < deadline, f"no stored upstream request for {request_id}"
            time.sleep(0.05)

    def close(self) -> None:
        self.gateway.stop()
        for router in (self.gateway_router, self.edit_router, self.block_router):
            router.close()
        self.upstream.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    stack = Stack(tmp_path_factory.mktemp("extproc-levels"))
    yield stack
    stack.close()


def test_route_router_after_gateway_router(stack: Stack) -> None:
    stack.calls.clear()
    response, row = stack.send("edit")

    assert response.status_code == 200, response.text
    assert row["route"] == "edit"
    assert stack.calls[:3] == [("gateway", "request_headers"), ("route", "request_headers"),
                               ("route", "request_body")]
    # Response filters run in reverse: the route's router first, then the gateway's.
    assert stack.calls[3:] == [("route", "response_headers"), ("gateway", "response_headers")]
    assert response.headers.get("x-order") == "gateway"
    # The route's router saw the request as the gateway's router left it.
    assert stack.edit_router.server.streams[-1][0].request_headers is not None
    assert header_value(stack.edit_router.server.streams[-1][0].request_headers, "x-gateway-router") == "1"


def test_route_router_header_reaches_upstream(stack: Stack) -> None:
    response, row = stack.send("edit")

    assert response.status_code == 200, response.text
    sent = stack.upstream_request(row["id"])
    names = {name.lower(): value for name, value in sent["headers"]}
    assert names.get("x-route-router") == "1"
    assert names.get("x-gateway-router") == "1"


def test_route_router_model_then_aliases(stack: Stack) -> None:
    response, row = stack.send("edit")

    assert response.status_code == 200, response.text
    assert row["requested_model"] == "client-model"
    assert row["router_model"] == "alias-me"
    assert row["routed_model"] == "aliased-model"  # modelAliases ran on the router's model
    sent = stack.upstream_request(row["id"])
    assert json.loads(sent["body"])["model"] == "aliased-model"
    # The gateway-phase call is what the router columns describe.
    assert json.loads(row["router_headers"]) == {"x-gateway-router": "1"}


def test_route_router_down_fail_open(stack: Stack) -> None:
    response, row = stack.send("open")

    assert response.status_code == 200, response.text
    assert row["outcome"] == "ok"
    assert row["route"] == "open"
    assert row["routed_model"] == "client-model"


def test_route_router_down_fail_closed(stack: Stack) -> None:
    response, row = stack.send("closed")

    assert response.status_code == 500, response.text
    assert "router" in response.json()["error"]["message"]
    assert row["outcome"] == "gateway_error"
    assert row["router_outcome"] == "failed_closed"
    assert row["route"] == "closed"


def test_route_router_immediate_response(stack: Stack) -> None:
    response, row = stack.send("block")

    assert response.status_code == 403
    assert response.json()["error"]["message"] == "blocked by route"
    assert row["outcome"] == "router_response"
    assert row["router_outcome"] == "immediate_response"
    assert row["status"] == 403
