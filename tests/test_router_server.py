"""The built-in router over real gRPC: an ext_proc client written here talks to RouterServer.

The client sends what Envoy sends (headers as raw_value, then a buffered body with
end_of_stream) and reads one response per message. The embedding classifier runs against a
local aiohttp stand-in of `/v1/embeddings` that returns hashed bag-of-words vectors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from meterway.router import RouterConfigError, RouterEngine, RouterServer, load_router_config
from meterway.router.classify import compile_routes, decide, extract_prompt, match_rules
from meterway.router.cli import main as router_main

ROUTES_YAML = """\
default: gemini-flash
routes:
- name: code
  model: qwen-coder
  priority: 10
  keywords: [python, code, c++]
  regex: ['\\w+\\.(py|rs)\\b']
  examples:
  - sort a list of numbers in ascending order
  - reverse a linked list in place
- name: analysis
  model: gpt-4o
  priority: 5
  keywords: [analyze, compare]
  examples:
  - which investment has the better long term return
- name: translation
  model: gemini-flash
  priority: 5
  keywords: [translate]
  regex: ['(?i)\\binto (french|german)\\b']
  examples:
  - say good morning in japanese
"""


# --- ext_proc client, as Envoy drives it ---------------------------------------------------

def header_map(headers: dict[str, str]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()])


def mutation_headers(mutation: pb.HeaderMutation) -> dict[str, base_pb2.HeaderValueOption]:
    return {option.header.key: option for option in mutation.set_headers}


class ExtProcCall:
    """One ext_proc stream: write a message, read its response, like Envoy in buffered mode."""

    def __init__(self, stub: pb_grpc.ExternalProcessorStub) -> None:
        self.call = stub.Process()

    async def send(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        await self.call.write(request)
        return await asyncio.wait_for(self.call.read(), 10)

    async def close(self) -> None:
        await self.call.done_writing()


async def send_request(stub, method: str, path: str, body: bytes | None, extra: dict[str, str] | None = None) -> tuple[pb.ProcessingResponse, pb.ProcessingResponse | None]:
    """Send request headers (and a buffered body), return the two responses."""
    headers = {":method": method, ":path": path, ":authority": "127.0.0.1:3000", ":scheme": "http"}
    if body is not None:
        headers["content-type"] = "application/json"
        headers["content-length"] = str(len(body))
    headers.update(extra or {})
    call = ExtProcCall(stub)
    first = await call.send(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(headers), end_of_stream=body is None)))
    second = None
    if body is not None and first.WhichOneof("response") == "request_headers":
        second = await call.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    await call.close()
    return first, second


def chat(model: str | None, prompt: str, stream: bool | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]}
    if model is not None:
        body["model"] = model
    if stream is not None:
        body["stream"] = stream
    body.update(extra)
    return json.dumps(body).encode()


def selected(response: pb.ProcessingResponse, header: str = "x-selected-model") -> str | None:
    option = mutation_headers(response.request_body.response.header_mutation).get(header)
    return option.header.raw_value.decode() if option else None


async def start_router(tmp_path: Path, yaml_text: str) -> tuple[RouterServer, grpc.aio.Channel, pb_grpc.ExternalProcessorStub]:
    config_path = tmp_path / "router.yaml"
    config_path.write_text(yaml_text)
    config = load_router_config(config_path)
    server = RouterServer(RouterEngine(config), "127.0.0.1:0")
    port = await server.start()
    limits = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=limits)
    return server, channel, pb_grpc.ExternalProcessorStub(channel)


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[pb_grpc.ExternalProcessorStub]:
    server, channel, stub = await start_router(tmp_path, ROUTES_YAML)
    yield stub
    await channel.close()
    await server.stop(0)


# --- an OpenAI-compatible /v1/embeddings stand-in --------------------------------------------

DIMENSIONS = 256


def bag_of_words(text: str) -> list[float]:
    """Hash each lowercase word into one of DIMENSIONS buckets and count it."""
    vector = [0.0] * DIMENSIONS
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vector[zlib.crc32(word.encode()) % DIMENSIONS] += 1.0
    return vector


class EmbeddingsStandIn:
    """Serves bag-of-words embeddings; inputs containing `slowprompt` wait `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.authorization: list[str | None] = []
        self.url = ""
        self.release = asyncio.Event()
        self.failing = False
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.requests.append(payload)
        if self.failing:
            return web.json_response({"error": {"message": "model is loading"}}, status=503)
        self.authorization.append(request.headers.get("Authorization"))
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        if any("slowprompt" in text for text in inputs):
            # Wait for `delay`, or until stop(), so teardown does not wait for the full delay.
            try:
                await asyncio.wait_for(self.release.wait(), self.delay)
            except TimeoutError:
                pass
        data = [{"object": "embedding", "index": i, "embedding": bag_of_words(text)} for i, text in enumerate(inputs)]
        return web.json_response({"object": "list", "data": data, "model": payload["model"]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1/embeddings"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


def embeddings_yaml(url: str, timeout: float = 2.0, extra: str = "") -> str:
    return ROUTES_YAML + textwrap.dedent(f"""\
        embeddings:
          url: {url}
          model: bow-test
          threshold: 0.5
          timeout: {timeout}
        """) + extra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- rules -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("prompt", "model", "reason"),
    [
        ("Why does my Python loop never end?", "qwen-coder", "keyword:python"),
        ("Is C++ faster here?", "qwen-coder", "keyword:c++"),
        ("Look at main.rs line 4", "qwen-coder", r"regex:\w+\.(py|rs)\b"),
        ("Please COMPARE these offers", "gpt-4o", "keyword:compare"),
        ("Put this into German please", "gemini-flash", "regex:(?i)\\binto (french|german)\\b"),
        ("Tell me a joke", "gemini-flash", "default"),
        # Whole words only: "pythonic" and "decode" do not contain the keywords.
        ("Is this pythonic enough to decode?", "gemini-flash", "default"),
    ],
)
def test_rules_choose_route(prompt: str, model: str, reason: str, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(ROUTES_YAML)
    config = load_router_config(tmp_path / "r.yaml")
    decision = decide(prompt, compile_routes(config.routes), config.default)
    assert decision is not None
    assert decision.model == model
    assert decision.reason == reason


def test_rules_priority_then_order(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(ROUTES_YAML)
    routes = compile_routes(load_router_config(tmp_path / "r.yaml").routes)
    # code (priority 10) beats analysis (5).
    assert match_rules("analyze this python script", routes).route == "code"
    # analysis and translation share priority 5, so the one listed first wins.
    assert match_rules("translate and compare", routes).route == "analysis"
    assert match_rules("nothing to see", routes) is None


def test_extract_prompt_shapes() -> None:
    parts = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": [{"type": "text", "text": "last"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert extract_prompt(parts) == "last"
    anthropic = {"system": "s", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi claude"}]}]}
    assert extract_prompt(anthropic) == "hi claude"
    assert extract_prompt({"input": "plain responses input"}) == "plain responses input"
    responses_items = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "item text"}]},
                                 {"type": "function_call_output", "call_id": "c", "output": "42"}]}
    assert extract_prompt(responses_items) == "item text"
    assert extract_prompt({"messages": [{"role": "assistant", "content": "only me"}]}) is None
    assert extract_prompt([1, 2]) is None


# --- protocol ----------------------------------------------------------------------------------

async def test_keyword_sets_header(router) -> None:
    first, second = await send_request(router, "POST", "/v1/chat/completions", chat("MoM", "fix my python code"))
    assert first.WhichOneof("response") == "request_headers"
    assert first.request_headers.response.status == pb.CommonResponse.CONTINUE
    assert not first.request_headers.response.HasField("header_mutation")

    common = second.request_body.response
    option = mutation_headers(common.header_mutation)["x-selected-model"]
    assert option.header.raw_value == b"qwen-coder"
    assert option.header.value == ""
    assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert common.clear_route_cache


async def test_auto_model_body_rewrite(router) -> None:
    body = chat("MoM", "analyze the quarterly numbers", temperature=0.2)
    _, second = await send_request(router, "POST", "/v1/chat/completions", body)
    common = second.request_body.response

    assert selected(second) == "gpt-4o"
    new_body = common.body_mutation.body
    rewritten = json.loads(new_body)
    assert rewritten["model"] == "gpt-4o"
    assert rewritten["messages"] == json.loads(body)["messages"]
    assert rewritten["temperature"] == 0.2
    assert "stream_options" not in rewritten
    assert list(common.header_mutation.remove_headers) == ["content-length"]
    assert mutation_headers(common.header_mutation)["content-length"].header.raw_value == str(len(new_body)).encode()


async def test_include_usage_streams_only(router) -> None:
    _, streamed = await send_request(router, "POST", "/v1/chat/completions", chat("auto", "hello", stream=True))
    body = json.loads(streamed.request_body.response.body_mutation.body)
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "gemini-flash"

    # A client's own stream_options keep their other keys.
    _, own = await send_request(router, "POST", "/v1/chat/completions", chat("gpt-4o", "hi", stream=True, stream_options={"include_obfuscation": False}))
    assert json.loads(own.request_body.response.body_mutation.body)["stream_options"] == {"include_obfuscation": False, "include_usage": True}

    _, plain = await send_request(router, "POST", "/v1/chat/completions", chat("gpt-4o", "hello", stream=False))
    assert not plain.request_body.response.HasField("body_mutation")

    # Anthropic's messages API rejects stream_options, so the body stays as sent.
    _, anthropic = await send_request(router, "POST", "/v1/messages", chat("gpt-4o", "hello", stream=True))
    assert not anthropic.request_body.response.HasField("body_mutation")
    assert selected(anthropic) == "gpt-4o"


async def test_explicit_model_kept(router) -> None:
    _, known = await send_request(router, "POST", "/v1/chat/completions", chat("gpt-4o", "write python code"))
    assert selected(known) == "gpt-4o"
    assert not known.request_body.response.HasField("body_mutation")

    _, unknown = await send_request(router, "POST", "/v1/chat/completions", chat("llama3", "write python code"))
    assert selected(unknown) is None
    assert not unknown.request_body.response.HasField("body_mutation")
    assert not unknown.request_body.response.clear_route_cache


async def test_embeddings_request_not_classified(router) -> None:
    body = json.dumps({"model": "auto", "input": "python code"}).encode()
    _, second = await send_request(router, "POST", "/v1/embeddings", body)
    assert selected(second) is None
    assert not second.request_body.response.HasField("body_mutation")


async def test_large_body_routed(router) -> None:
    # Larger than gRPC's default 4 MiB message limit.
    filler = "lorem ipsum " * 400_000
    body = chat("MoM", filler + " now compare them")
    assert len(body) > 4 * 1024 * 1024
    _, second = await send_request(router, "POST", "/v1/chat/completions", body)
    assert selected(second) == "gpt-4o"
    common = second.request_body.response
    new_body = common.body_mutation.body
    assert json.loads(new_body)["messages"][1]["content"] == filler + " now compare them"
    assert mutation_headers(common.header_mutation)["content-length"].header.raw_value == str(len(new_body)).encode()


async def test_models_immediate_response(router) -> None:
    first, second = await send_request(router, "GET", "/v1/models?limit=5", None)
    assert second is None
    assert first.WhichOneof("response") == "immediate_response"
    immediate = first.immediate_response
    assert immediate.status.code == 200
    assert mutation_headers(immediate.headers)["content-type"].header.raw_value == b"application/json"
    listing = json.loads(immediate.body)
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["MoM", "auto", "vllm-sr/auto", "qwen-coder", "gpt-4o", "gemini-flash"]


async def test_non_json_body_passes(router) -> None:
    _, second = await send_request(router, "POST", "/v1/chat/completions", b"model=MoM&prompt=python")
    common = second.request_body.response
    assert common.status == pb.CommonResponse.CONTINUE
    assert not common.HasField("header_mutation") or not common.header_mutation.set_headers
    assert not common.HasField("body_mutation")


async def test_response_headers_report_decision(router) -> None:
    call = ExtProcCall(router)
    headers = {":method": "POST", ":path": "/v1/chat/completions"}
    await call.send(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(headers))))
    await call.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=chat("MoM", "python please"), end_of_stream=True)))
    ok = await call.send(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=header_map({":status": "200"}))))
    found = mutation_headers(ok.response_headers.response.header_mutation)
    assert found["x-vsr-selected-model"].header.raw_value == b"qwen-coder"
    assert found["x-vsr-selected-decision"].header.raw_value == b"code"
    body = await call.send(pb.ProcessingRequest(response_body=pb.HttpBody(body=b"{}", end_of_stream=True)))
    assert body.WhichOneof("response") == "response_body"
    trailers = await call.send(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
    assert trailers.WhichOneof("response") == "response_trailers"
    await call.close()

    # Error responses get no decision headers.
    call = ExtProcCall(router)
    await call.send(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(headers))))
    await call.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=chat("MoM", "python"), end_of_stream=True)))
    failed = await call.send(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=header_map({":status": "503"}))))
    assert not failed.response_headers.response.header_mutation.set_headers
    await call.close()


async def test_out_of_order_messages_continue(router) -> None:
    call = ExtProcCall(router)
    early = await call.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=chat("MoM", "python"), end_of_stream=True)))
    assert early.WhichOneof("response") == "request_body"
    assert not early.request_body.response.HasField("body_mutation")
    trailers = await call.send(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    assert trailers.WhichOneof("response") == "request_trailers"
    late = await call.send(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=header_map({":status": "200"}))))
    assert not late.response_headers.response.header_mutation.set_headers
    await call.close()


async def test_chunked_body_passes_unchanged(router) -> None:
    body = chat("MoM", "python code")
    call = ExtProcCall(router)
    await call.send(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map({":method": "POST", ":path": "/v1/chat/completions"}))))
    first = await call.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=body[:10], end_of_stream=False)))
    last = await call.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=body[10:], end_of_stream=True)))
    for response in (first, last):
        assert response.WhichOneof("response") == "request_body"
        assert not response.request_body.response.HasField("body_mutation")
        assert not response.request_body.response.header_mutation.set_headers
    await call.close()


# --- config ------------------------------------------------------------------------------------

def test_config_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("routes:\n- name: code\n  model: qwen-coder\n  keyword: [python]\nauto_models: [MoM]\nembeddings:\n  url: http://127.0.0.1:1\n  model: m\n  apiKey: $ROUTER_TEST_MISSING_KEY\n")
    with pytest.raises(RouterConfigError) as caught:
        load_router_config(path, environ={})
    assert caught.value.problems == [f"{path}:9: embeddings.apiKey: environment variable $ROUTER_TEST_MISSING_KEY is not set; export it before starting the router"]

    with pytest.raises(RouterConfigError) as caught:
        load_router_config(path, environ={"ROUTER_TEST_MISSING_KEY": "sk-hidden"})
    problems = caught.value.problems
    assert f"{path}:4: routes[0].keyword: unknown key; did you mean `keywords`?" in problems
    assert f"{path}:5: auto_models: unknown key; write `autoModels` (keys are camelCase)" in problems
    assert not any("sk-hidden" in problem for problem in problems)


def test_config_error_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listen: localhost\nroutes:\n- name: a\n  model: m\n  regex: ['([']\n- name: a\n  model: n\n")
    with pytest.raises(RouterConfigError) as caught:
        load_router_config(path)
    text = "\n".join(caught.value.problems)
    assert f"{path}:1: listen: 'localhost' is not HOST:PORT; write e.g. 127.0.0.1:50051" in text
    assert f"{path}:5: routes[0].regex: pattern '([' is not a valid Python regular expression" in text

    path.write_text("routes:\n- name: a\n  model: m\n- name: a\n  model: n\n")
    with pytest.raises(RouterConfigError, match="route name 'a' is used twice"):
        load_router_config(path)


def test_example_config_loads() -> None:
    config = load_router_config(Path(__file__).parent.parent / "configs" / "router.yaml")
    assert config.listen == "127.0.0.1:50051"
    assert config.route_models() == ["qwen-coder", "gpt-4o", "gemini-flash"]


def test_cli_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(ROUTES_YAML)
    assert router_main(["--config", str(tmp_path / "r.yaml"), "--check"]) == 0
    assert "route code -> qwen-coder (priority 10, 3 keywords, 1 regexes, 2 examples)" in capsys.readouterr().out

    (tmp_path / "bad.yaml").write_text("route: []\n")
    assert router_main(["--config", str(tmp_path / "bad.yaml"), "--check"]) == 2
    assert f"{tmp_path / 'bad.yaml'}:1: route: unknown key; did you mean `routes`?" in capsys.readouterr().err


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(ROUTES_YAML)
    process = subprocess.Popen(
        [sys.executable, "-m", "meterway.router", "--config", str(tmp_path / "r.yaml"), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            match = re.search(r"router listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
        assert port, "the router did not log its listen address"

        async def one_request() -> str | None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                _, second = await send_request(pb_grpc.ExternalProcessorStub(channel), "POST", "/v1/chat/completions", chat("MoM", "python"))
                return selected(second)

        assert asyncio.run(one_request()) == "qwen-coder"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "router stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- embedding classifier --------------------------------------------------------------------

@pytest.fixture
async def embeddings() -> AsyncIterator[EmbeddingsStandIn]:
    stand_in = EmbeddingsStandIn(delay=5.0)
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


async def test_embeddings_choose_route(tmp_path: Path, embeddings: EmbeddingsStandIn) -> None:
    server, channel, stub = await start_router(tmp_path, embeddings_yaml(embeddings.url))
    try:
        # All four examples were embedded in one request at start.
        assert len(embeddings.requests) == 1
        assert len(embeddings.requests[0]["input"]) == 4

        cases = [
            ("how do I sort these numbers in ascending order", "qwen-coder"),
            ("which fund has the better long term return", "gpt-4o"),
            ("how to say good morning in japanese", "gemini-flash"),
        ]
        for prompt, model in cases:
            _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", prompt))
            assert selected(second) == model, prompt
            assert json.loads(second.request_body.response.body_mutation.body)["model"] == model

        # A rule match skips the embeddings request.
        before = len(embeddings.requests)
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", "python question"))
        assert selected(second) == "qwen-coder"
        assert len(embeddings.requests) == before

        # Below the threshold the default wins.
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", "completely unrelated weather chat"))
        assert selected(second) == "gemini-flash"
    finally:
        await channel.close()
        await server.stop(0)


async def test_embeddings_latency_printed(tmp_path: Path, embeddings: EmbeddingsStandIn) -> None:
    server, channel, stub = await start_router(tmp_path, embeddings_yaml(embeddings.url))

    async def one(prompt: str) -> float:
        started = time.perf_counter()
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", prompt))
        elapsed = (time.perf_counter() - started) * 1000
        assert selected(second) == "qwen-coder"
        return elapsed

    by_rule: list[float] = []
    by_embedding: list[float] = []
    try:
        for _ in range(20):
            await one("python question")
        # Alternating the two kinds spreads any load on the machine evenly over both.
        for _ in range(200):
            by_rule.append(await one("python question"))
            by_embedding.append(await one("how do I sort these numbers in ascending order"))
    finally:
        await channel.close()
        await server.stop(0)

    def pct(samples: list[float], q: int) -> float:
        return statistics.quantiles(samples, n=100)[q - 1]

    print(
        f"\nrouter round trip, new stream per request, 200 requests each, client, router and stand-in in one event loop: "
        f"rule p50 {pct(by_rule, 50):.2f} ms p99 {pct(by_rule, 99):.2f} ms; "
        f"embedding p50 {pct(by_embedding, 50):.2f} ms p99 {pct(by_embedding, 99):.2f} ms; "
        f"added by the embedding classifier p50 {pct(by_embedding, 50) - pct(by_rule, 50):.2f} ms"
    )


async def test_embeddings_down_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meterway.router")
    url = f"http://127.0.0.1:{free_port()}/v1/embeddings"
    server, channel, stub = await start_router(tmp_path, embeddings_yaml(url, timeout=0.5))
    try:
        assert "embedding classifier unavailable" in caplog.text
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", "compare these"))
        assert selected(second) == "gpt-4o"
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", "sort numbers in ascending order"))
        assert selected(second) == "gemini-flash"
        assert json.loads(second.request_body.response.body_mutation.body)["model"] == "gemini-flash"
    finally:
        await channel.close()
        await server.stop(0)


async def test_embeddings_recover_after_outage(tmp_path: Path, embeddings: EmbeddingsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("meterway.router.embeddings.RETRY_INTERVAL", 0.0)
    embeddings.failing = True
    server, channel, stub = await start_router(tmp_path, embeddings_yaml(embeddings.url))
    prompt = "how do I sort these numbers in ascending order"
    try:
        assert "returned HTTP 503" in caplog.text
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", prompt))
        assert selected(second) == "gemini-flash"

        # The endpoint is back: a request starts a rebuild in the background, and once the
        # examples are embedded the classifier takes part again.
        embeddings.failing = False
        classifier = server.engine.classifier
        for _ in range(50):
            await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", prompt))
            if classifier.ready:
                break
            await asyncio.sleep(0.02)
        assert classifier.ready
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", prompt))
        assert selected(second) == "qwen-coder"
    finally:
        await channel.close()
        await server.stop(0)


async def test_embeddings_timeout_bounds_request(tmp_path: Path, embeddings: EmbeddingsStandIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meterway.router")
    timeout = 0.3
    server, channel, stub = await start_router(tmp_path, embeddings_yaml(embeddings.url, timeout=timeout))
    try:
        started = time.perf_counter()
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", "slowprompt sort numbers in ascending order"))
        elapsed = time.perf_counter() - started
        assert selected(second) == "gemini-flash"
        # The stand-in waits 5 s; the router gives up after the timeout plus scheduling slack.
        assert elapsed < timeout + 1.5, elapsed
        assert "timed out after 0.3 s" in caplog.text
    finally:
        await channel.close()
        await server.stop(0)


async def test_embeddings_key_not_logged(tmp_path: Path, embeddings: EmbeddingsStandIn, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="meterway.router")
    monkeypatch.setenv("ROUTER_TEST_EMBEDDINGS_KEY", "sk-router-test-secret")
    server, channel, stub = await start_router(tmp_path, embeddings_yaml(embeddings.url, extra="  apiKey: $ROUTER_TEST_EMBEDDINGS_KEY\n"))
    try:
        _, second = await send_request(stub, "POST", "/v1/chat/completions", chat("MoM", "private prompt: sort a list of numbers in ascending order"))
        assert selected(second) == "qwen-coder"
    finally:
        await channel.close()
        await server.stop(0)
    assert embeddings.authorization == ["Bearer sk-router-test-secret", "Bearer sk-router-test-secret"]
    assert "sk-router-test-secret" not in caplog.text
    assert "private prompt" not in caplog.text
    assert "decision route=code model=qwen-coder reason=embedding:" in caplog.text

