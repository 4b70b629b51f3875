"""The ext_proc client against the stand-in router, over real gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections.abc import AsyncIterator

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from addons.extproc import ExtProcClient, ProcessingOptions, validate_options
from addons.extproc_options import ProcessingOptionsError
from tests.standins.extproc_server import END_STREAM, ExtProcServer, continue_reply, header

Action = base_pb2.HeaderValueOption
Mode = processing_mode_pb2.ProcessingMode
BUFFERED = ProcessingOptions(request_body_mode="buffered", response_body_mode="none", response_header_mode="send")
CHAT_HEADERS = [("content-type", "application/json"), ("x-client", "one")]


def chat_body(prompt: str, model: str = "MoM", stream: bool = False) -> bytes:
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if stream:
        payload["stream"] = True
    return json.dumps(payload).encode()


@pytest.fixture
async def router() -> AsyncIterator[ExtProcServer]:
    server = ExtProcServer("scripted")
    await server.start()
    yield server
    await server.stop()


async def started(server: ExtProcServer, options: ProcessingOptions = BUFFERED, **kwargs: object) -> ExtProcClient:
    client = ExtProcClient(server.target, options, **kwargs)
    await client.start()
    return client


async def send_chat(client: ExtProcClient, body: bytes | None = b'{"model": "MoM"}', path: str = "/v1/chat/completions"):
    session = client.session()
    headers = list(CHAT_HEADERS)
    if body:
        headers.append(("content-length", str(len(body))))
    decision = await session.request("POST", "http", "gw.local:3000", path, headers, body)
    await session.close()
    return decision


def headers_reply(mutation: pb.HeaderMutation, **common: object) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(
        response=pb.CommonResponse(header_mutation=mutation, **common)))


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


# Options


def test_options_from_camel_case_config():
    options = ProcessingOptions.from_config({
        "requestHeaderMode": "send", "requestBodyMode": "buffered", "responseBodyMode": "none",
        "responseHeaderMode": "skip", "requestTrailerMode": "skip", "allowModeOverride": True,
    })
    assert options.request_body_mode == "buffered"
    assert options.response_body_mode == "none"
    assert options.response_header_mode == "skip"
    assert options.request_trailer_mode == "skip"
    assert options.allow_mode_override is True


def test_options_defaults_follow_agentgateway():
    options = ProcessingOptions.from_config(None)
    assert options.request_header_mode == "send"
    assert options.response_header_mode == "send"
    assert options.request_body_mode == "fullDuplexStreamed"
    assert options.response_body_mode == "fullDuplexStreamed"
    assert options.allow_mode_override is False


def test_options_accept_crd_spelling():
    options = ProcessingOptions.from_config({"requestBodyMode": "BufferedPartial", "responseHeaderMode": "Skip"})
    assert options.request_body_mode == "bufferedPartial"
    assert options.response_header_mode == "skip"


@pytest.mark.parametrize("config, message", [
    ({"requestBodyMode": "chunked"}, "invalid processingOptions.requestBodyMode 'chunked'"),
    ({"requestBodyMode": "streamed"}, "invalid processingOptions.requestBodyMode 'streamed'"),
    ({"bodyMode": "none"}, "unknown processingOptions key 'bodyMode'"),
    ({"allowModeOverride": "yes"}, "allowModeOverride must be true or false"),
])
def test_options_reject_bad_values(config, message):
    with pytest.raises(ProcessingOptionsError, match=message):
        ProcessingOptions.from_config(config)


def test_validate_options_rejects_held_stream():
    problems = validate_options(ProcessingOptions(response_body_mode="buffered"))
    assert len(problems) == 1
    assert "allowModeOverride: true" in problems[0]
    assert validate_options(ProcessingOptions(response_body_mode="buffered", allow_mode_override=True)) == []
    assert validate_options(ProcessingOptions()) == []
    assert validate_options(BUFFERED) == []


def test_client_rejects_bad_failure_mode():
    with pytest.raises(ValueError, match="invalid extProc failureMode 'open'"):
        ExtProcClient("127.0.0.1:1", BUFFERED, failure_mode="open")


# What the client sends


async def test_request_messages_follow_envoy(router):
    client = await started(router)
    body = b'{"model": "MoM"}'
    decision = await send_chat(client, body)
    await client.close()

    assert decision.outcome == "ok"
    first, second = router.streams[0]
    assert first.WhichOneof("request") == "request_headers"
    assert first.protocol_config.request_body_mode == Mode.BUFFERED
    assert not second.HasField("protocol_config")
    sent = [(entry.key, entry.raw_value.decode(), entry.value) for entry in first.request_headers.headers.headers]
    assert [key for key, _, _ in sent[:4]] == [":method", ":scheme", ":authority", ":path"]
    assert sent[3][1] == "/v1/chat/completions"
    assert all(value == "" for _, _, value in sent)
    assert first.request_headers.end_of_stream is False
    assert second.request_body.body == body
    assert second.request_body.end_of_stream is True


async def test_get_without_body_sends_headers_only(router):
    client = await started(router)
    decision = await send_chat(client, None, path="/v1/models")
    await client.close()
    assert decision.outcome == "ok"
    assert len(router.streams[0]) == 1
    assert router.streams[0][0].request_headers.end_of_stream is True


async def test_nothing_sent_is_skipped(router):
    options = ProcessingOptions(request_header_mode="skip", request_body_mode="none")
    client = await started(router, options)
    decision = await send_chat(client)
    await client.close()
    assert decision.outcome == "skipped"
    assert router.received == []


# Header mutations


@pytest.mark.parametrize("action, exists, expected", [
    # Action 0 is also what an unset field reads as, and Envoy 1.40 overwrites then.
    (Action.APPEND_IF_EXISTS_OR_ADD, True, ["two"]),
    (Action.APPEND_IF_EXISTS_OR_ADD, False, ["two"]),
    (Action.ADD_IF_ABSENT, True, ["one"]),
    (Action.ADD_IF_ABSENT, False, ["two"]),
    (Action.OVERWRITE_IF_EXISTS_OR_ADD, True, ["two"]),
    (Action.OVERWRITE_IF_EXISTS_OR_ADD, False, ["two"]),
    (Action.OVERWRITE_IF_EXISTS, True, ["two"]),
    (Action.OVERWRITE_IF_EXISTS, False, []),
])
async def test_append_actions(router, action, exists, expected):
    name = "x-client" if exists else "x-new"
    router.scripts["request_headers"] = lambda message, state: headers_reply(
        pb.HeaderMutation(set_headers=[header(name, "two", action)]))
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert decision.outcome == "ok"
    assert values(decision.headers, name) == expected


@pytest.mark.parametrize("append, expected", [(True, ["one", "two"]), (False, ["two"])])
async def test_deprecated_append_flag(router, append, expected):
    option = header("x-client", "two", Action.ADD_IF_ABSENT)
    option.append.value = append
    router.scripts["request_headers"] = lambda message, state: headers_reply(pb.HeaderMutation(set_headers=[option]))
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert values(decision.headers, "x-client") == expected


async def test_value_field_read_without_raw_value(router):
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="X-Selected-Model", value="gpt-4o"))
    router.scripts["request_headers"] = lambda message, state: headers_reply(pb.HeaderMutation(set_headers=[option]))
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert values(decision.headers, "x-selected-model") == ["gpt-4o"]
    assert decision.set_headers == {"x-selected-model": "gpt-4o"}


async def test_remove_and_ignored_headers(router):
    mutation = pb.HeaderMutation(
        remove_headers=["X-Client", "host", ":path", "x-absent"],
        set_headers=[header(name, "evil") for name in ("x-envoy-upstream", ":method", ":authority", ":scheme", "host")]
        + [header("x-empty", "")],
    )
    router.scripts["request_headers"] = lambda message, state: headers_reply(mutation)
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    names = [key for key, _ in decision.headers]
    assert "x-client" not in names
    assert decision.removed_headers == ["x-client"]
    assert decision.set_headers == {}
    assert decision.path == "/v1/chat/completions"
    assert not any(name in names for name in ("x-envoy-upstream", "host", "x-empty"))


async def test_path_rewrite(router):
    router.scripts["request_headers"] = lambda message, state: headers_reply(
        pb.HeaderMutation(set_headers=[header(":path", "/v1/chat/completions?routed=1")]))
    client = await started(router)
    decision = await send_chat(client, path="/v1/responses")
    await client.close()
    assert decision.path == "/v1/chat/completions?routed=1"
    assert decision.set_headers == {":path": "/v1/chat/completions?routed=1"}
    assert not any(key.startswith(":") for key, _ in decision.headers)


# Bodies


async def test_body_rewrite_fixes_content_length(router):
    new_body = b'{"model": "qwen-coder", "messages": []}'
    router.scripts["request_body"] = lambda message, state: continue_reply("request_body", body=new_body)
    client = await started(router)
    decision = await send_chat(client, b'{"model": "MoM"}')
    await client.close()
    assert decision.body == new_body
    assert values(decision.headers, "content-length") == [str(len(new_body))]


async def test_clear_body(router):
    def clear(message, state):
        reply = continue_reply("request_body")
        reply.request_body.response.body_mutation.clear_body = True
        return reply

    router.scripts["request_body"] = clear
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert decision.body == b""
    assert values(decision.headers, "content-length") == ["0"]


async def test_unchanged_body_is_none(router):
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert decision.body is None
    assert values(decision.headers, "content-length") == ["16"]


async def test_continue_and_replace_skips_body(router):
    def replace(message, state):
        reply = headers_reply(pb.HeaderMutation(), status=pb.CommonResponse.CONTINUE_AND_REPLACE)
        reply.request_headers.response.body_mutation.body = b'{"replaced": true}'
        return reply

    router.scripts["request_headers"] = replace
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert decision.body == b'{"replaced": true}'
    assert values(decision.headers, "content-length") == ["18"]
    assert [m.WhichOneof("request") for m in router.streams[0]] == ["request_headers"]


async def test_body_reply_header_mutation_buffered(router):
    router.scripts["request_body"] = lambda message, state: continue_reply(
        "request_body", pb.HeaderMutation(set_headers=[header("x-selected-model", "gpt-4o")]))
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert values(decision.headers, "x-selected-model") == ["gpt-4o"]


async def test_body_reply_header_mutation_ignored_streamed(router):
    def to_streamed(message, state):
        reply = headers_reply(pb.HeaderMutation())
        reply.mode_override.request_body_mode = Mode.STREAMED
        return reply

    router.scripts["request_headers"] = to_streamed
    router.scripts["request_body"] = lambda message, state: continue_reply(
        "request_body", pb.HeaderMutation(set_headers=[header("x-selected-model", "gpt-4o")]))
    client = await started(router, allow_mode_override=True)
    decision = await send_chat(client)
    await client.close()
    assert decision.outcome == "ok"
    assert [m.WhichOneof("request") for m in router.streams[0]] == ["request_headers", "request_body"]
    assert values(decision.headers, "x-selected-model") == []


async def test_full_duplex_streamed_body(router):
    def headers_script(message, state):
        return headers_reply(pb.HeaderMutation())

    def body_script(message, state):
        chunks = []
        for part, last in ((b'{"model": ', False), (b'"gpt-4o"}', True)):
            reply = continue_reply("request_body", pb.HeaderMutation(set_headers=[header("x-selected-model", "gpt-4o")]))
            streamed = reply.request_body.response.body_mutation.streamed_response
            streamed.body, streamed.end_of_stream = part, last
            chunks.append(reply)
        return chunks

    router.scripts.update(request_headers=headers_script, request_body=body_script)
    client = await started(router, ProcessingOptions())
    decision = await send_chat(client)
    await client.close()
    assert decision.outcome == "ok"
    assert decision.body == b'{"model": "gpt-4o"}'
    assert values(decision.headers, "content-length") == ["19"]
    assert values(decision.headers, "x-selected-model") == ["gpt-4o"]
    assert router.streams[0][0].protocol_config.request_body_mode == Mode.FULL_DUPLEX_STREAMED


async def test_clean_close_continues_unchanged(router):
    router.scripts["request_headers"] = lambda message, state: END_STREAM
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert decision.outcome == "ok"
    assert decision.error is None
    assert decision.headers[:2] == CHAT_HEADERS
    assert decision.body is None
    assert [m.WhichOneof("request") for m in router.streams[0]] == ["request_headers"]


# Immediate responses


@pytest.mark.parametrize("phase", ["request_headers", "request_body"])
async def test_immediate_response(router, phase):
    def answer(message, state):
        reply = pb.ProcessingResponse()
        reply.immediate_response.status.code = 429
        reply.immediate_response.body = b'{"error": {"message": "slow down"}}'
        reply.immediate_response.details = "rate_limited"
        reply.immediate_response.grpc_status.status = 8
        reply.immediate_response.headers.set_headers.append(header("content-type", "application/json"))
        reply.immediate_response.headers.set_headers.append(header("x-vsr-fast-response", "true"))
        return reply

    router.scripts[phase] = answer
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert decision.outcome == "immediate_response"
    immediate = decision.immediate
    assert immediate.status == 429
    assert immediate.body == b'{"error": {"message": "slow down"}}'
    assert values(immediate.headers, "content-type") == ["application/json"]
    assert values(immediate.headers, "x-vsr-fast-response") == ["true"]
    assert values(immediate.headers, "content-length") == [str(len(immediate.body))]
    assert immediate.grpc_status == 8
    assert immediate.details == "rate_limited"


async def test_immediate_response_in_response_headers(router):
    def answer(message, state):
        reply = pb.ProcessingResponse()
        reply.immediate_response.status.code = 403
        reply.immediate_response.body = b"blocked"
        return reply

    router.scripts["response_headers"] = answer
    client = await started(router)
    session = client.session()
    await session.request("POST", "http", "gw", "/v1/chat/completions", [], b"{}")
    decision = await session.response_headers(200, [("content-type", "application/json")])
    await session.close()
    await client.close()
    assert decision.outcome == "immediate_response"
    assert decision.immediate.status == 403
    assert values(decision.immediate.headers, "content-type") == ["text/plain"]


# Mode override


def override_to_streamed(message, state):
    reply = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=pb.CommonResponse()))
    reply.mode_override.response_body_mode = Mode.STREAMED
    return reply


@pytest.mark.parametrize("allowed, expected", [(True, "streamed"), (False, "none")])
async def test_mode_override_only_when_allowed(router, allowed, expected):
    router.scripts["response_headers"] = override_to_streamed
    client = await started(router, allow_mode_override=allowed)
    session = client.session()
    await session.request("POST", "http", "gw", "/v1/chat/completions", [], b"{}")
    await session.response_headers(200, [("content-type", "text/event-stream")])
    assert session.response_mode.body == expected
    session.observe_response_chunk(b"data: {}\n\n", True)
    await asyncio.sleep(0.05)
    await session.close()
    await client.close()
    kinds = [m.WhichOneof("request") for m in router.streams[0]]
    assert ("response_body" in kinds) is allowed


async def test_mode_override_in_body_reply_ignored(router):
    def body_override(message, state):
        reply = continue_reply("request_body")
        reply.mode_override.response_body_mode = Mode.STREAMED
        return reply

    router.scripts["request_body"] = body_override
    client = await started(router, allow_mode_override=True)
    decision = await send_chat(client)
    await client.close()
    assert decision.response_mode.body == "none"


async def test_request_header_override_sets_response_mode(router):
    def request_override(message, state):
        reply = headers_reply(pb.HeaderMutation())
        reply.mode_override.request_body_mode = Mode.BUFFERED
        reply.mode_override.response_header_mode = Mode.SKIP
        return reply

    router.scripts["request_headers"] = request_override
    client = await started(router, allow_mode_override=True)
    decision = await send_chat(client)
    await client.close()
    assert decision.response_mode.header == "skip"
    assert decision.response_mode.trailer == "skip"


# Response phase


async def test_response_header_mode_skip(router):
    client = await started(router, ProcessingOptions(request_body_mode="buffered", response_header_mode="skip",
                                                     response_body_mode="none"))
    session = client.session()
    await session.request("POST", "http", "gw", "/v1/chat/completions", [], b"{}")
    decision = await session.response_headers(200, [("content-type", "application/json")])
    await session.close()
    await client.close()
    assert decision.outcome == "skipped"
    assert [m.WhichOneof("request") for m in router.streams[0]] == ["request_headers", "request_body"]


async def test_response_headers_mutated(router):
    router.scripts["response_headers"] = lambda message, state: pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=pb.HeaderMutation(
            set_headers=[header("x-vsr-selected-model", "gpt-4o"), header(":status", "203")],
            remove_headers=["server"]))))
    client = await started(router)
    session = client.session()
    await session.request("POST", "http", "gw", "/v1/chat/completions", [], b"{}")
    decision = await session.response_headers(200, [("content-type", "application/json"), ("server", "x")])
    await session.close()
    await client.close()
    assert decision.outcome == "ok"
    assert decision.status == 203
    assert decision.headers == [("content-type", "application/json"), ("x-vsr-selected-model", "gpt-4o")]
    assert decision.removed_headers == ["server"]
    sent = router.streams[0][2].response_headers.headers.headers
    assert (sent[0].key, sent[0].raw_value) == (":status", b"200")


async def test_buffered_response_body_mutated(router):
    router.scripts["response_body"] = lambda message, state: pb.ProcessingResponse(
        response_body=pb.BodyResponse(response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(set_headers=[header("x-checked", "yes")]),
            body_mutation=pb.BodyMutation(body=b'{"ok": true}'))))
    options = ProcessingOptions(request_body_mode="buffered", response_body_mode="buffered", allow_mode_override=True)
    client = await started(router, options)
    session = client.session()
    await session.request("POST", "http", "gw", "/v1/chat/completions", [], b"{}")
    await session.response_headers(200, [("content-type", "application/json")])
    decision = await session.response_body(b'{"ok": false, "pad": 1}', [("content-type", "application/json"),
                                                                       ("content-length", "23")])
    await session.close()
    await client.close()
    assert decision.outcome == "ok"
    assert decision.body == b'{"ok": true}'
    assert values(decision.headers, "content-length") == ["12"]
    assert values(decision.headers, "x-checked") == ["yes"]


async def test_observed_buffered_stream_sent_once(router, caplog):
    router.scripts["response_body"] = lambda message, state: continue_reply("response_body", body=b"changed")
    options = ProcessingOptions(request_body_mode="none", response_header_mode="skip",
                                response_body_mode="buffered", allow_mode_override=True)
    client = await started(router, options)
    session = client.session()
    caplog.set_level(logging.WARNING, logger="addons.extproc_body")
    for chunk, last in ((b"data: 1\n\n", False), (b"data: 2\n\n", False), (b"data: [DONE]\n\n", True)):
        session.observe_response_chunk(chunk, last)
    await asyncio.sleep(0.1)
    await session.close()
    await client.close()
    bodies = [m.response_body for m in router.received if m.WhichOneof("request") == "response_body"]
    assert len(bodies) == 1
    assert bodies[0].body == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    assert bodies[0].end_of_stream is True
    assert "observe-only" in caplog.text


async def test_session_leaves_no_tasks(router):
    client = await started(router, ProcessingOptions(request_body_mode="buffered", response_body_mode="fullDuplexStreamed"))
    before = len(asyncio.all_tasks())
    session = client.session()
    await session.request("POST", "http", "gw", "/v1/chat/completions", [], b"{}")
    await session.response_headers(200, [("content-type", "text/event-stream")])
    for index in range(5):
        session.observe_response_chunk(b"data: %d\n\n" % index, index == 4)
    await session.close()
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= before
    await client.close()
    assert sum(1 for m in router.received if m.WhichOneof("request") == "response_body") == 5


# Failures


@pytest.mark.parametrize("failure_mode, outcome, status", [("failOpen", "failed_open", None),
                                                          ("failClosed", "failed_closed", 500)])
async def test_router_down(failure_mode, outcome, status):
    server = ExtProcServer("keywords")
    await server.start()
    await server.stop()
    client = await started(server, failure_mode=failure_mode)
    began = time.perf_counter()
    decision = await send_chat(client, chat_body("python please"))
    await client.close()
    assert time.perf_counter() - began < 5
    assert decision.outcome == outcome
    assert server.target in decision.error
    assert "unreachable" in decision.error
    assert values(decision.headers, "x-client") == ["one"]
    assert decision.body is None
    if status is None:
        assert decision.immediate is None
        return
    assert decision.immediate.status == status
    error = json.loads(decision.immediate.body)["error"]
    assert server.target in error["message"]
    assert "failureMode: failOpen" in error["message"]
    assert error["code"] == "router_unavailable"
    assert values(decision.immediate.headers, "content-type") == ["application/json"]


@pytest.mark.parametrize("failure_mode, outcome, status", [("failOpen", "timeout_failed_open", None),
                                                          ("failClosed", "timeout_failed_closed", 504)])
async def test_slow_router_times_out(router, failure_mode, outcome, status):
    router.mode = "keywords"
    router.delay = 2.0
    client = await started(router, failure_mode=failure_mode, message_timeout=0.2)
    began = time.perf_counter()
    decision = await send_chat(client, chat_body("python please"))
    elapsed = time.perf_counter() - began
    await client.close()
    assert elapsed < 1.0
    assert decision.outcome == outcome
    assert "0.2 s" in decision.error
    assert (decision.immediate.status if decision.immediate else None) == status
    assert values(decision.headers, "x-selected-model") == []


def wrong_kind(message, state):
    return continue_reply("response_headers")


def two_replies(message, state):
    return [continue_reply("request_headers"), continue_reply("request_headers")]


def bad_header_name(message, state):
    return headers_reply(pb.HeaderMutation(set_headers=[header("bad name", "x")]))


def bad_header_value(message, state):
    return headers_reply(pb.HeaderMutation(set_headers=[header("x-ok", "a\r\nb")]))


def crash(message, state):
    raise RuntimeError("router bug")


def streamed_chunk_in_buffered(message, state):
    reply = continue_reply("request_body")
    reply.request_body.response.body_mutation.streamed_response.body = b"x"
    return reply


@pytest.mark.parametrize("phase, script, reason", [
    ("request_headers", wrong_kind, "expected a request_headers reply, got response_headers"),
    ("request_headers", two_replies, "expected a request_body reply, got request_headers"),
    ("request_headers", bad_header_name, "invalid header name 'bad name'"),
    ("request_headers", bad_header_value, "contains CR, LF or NUL"),
    ("request_body", crash, "gRPC UNKNOWN"),
    ("request_body", streamed_chunk_in_buffered, "only valid in fullDuplexStreamed"),
])
async def test_garbage_replies_fail(router, phase, script, reason):
    router.scripts[phase] = script
    client = await started(router)
    decision = await send_chat(client)
    await client.close()
    assert decision.outcome == "failed_closed"
    assert reason in decision.error
    assert decision.immediate.status == 500
    assert json.loads(decision.immediate.body)["error"]["code"] in ("router_protocol_error", "router_unavailable")


async def test_client_closed_mid_request(router):
    router.mode = "keywords"
    router.delay = 1.0
    client = await started(router, failure_mode="failOpen")
    pending = asyncio.create_task(send_chat(client, chat_body("python")))
    await asyncio.sleep(0.1)
    await client.close()
    decision = await asyncio.wait_for(pending, 2)
    assert decision.outcome == "failed_open"
    assert "client was closed" in decision.error or "CANCELLED" in decision.error


async def test_session_after_close_fails_cleanly(router):
    client = await started(router, failure_mode="failOpen")
    session = client.session()
    await client.close()
    decision = await session.request("GET", "http", "gw", "/v1/models", [], None)
    await session.close()
    assert decision.outcome == "failed_open"
    assert "is closed" in decision.error


async def test_reconnect_after_router_restart():
    server = ExtProcServer("keywords")
    await server.start()
    client = await started(server, failure_mode="failOpen")
    assert (await send_chat(client, chat_body("python"))).outcome == "ok"

    await server.stop()
    assert (await send_chat(client, chat_body("python"))).outcome == "failed_open"

    await server.start()
    deadline = time.monotonic() + 5
    outcome = None
    while time.monotonic() < deadline:
        decision = await send_chat(client, chat_body("python"))
        outcome = decision.outcome
        if outcome == "ok":
            break
        await asyncio.sleep(0.05)
    await client.close()
    await server.stop()
    assert outcome == "ok"
    assert values(decision.headers, "x-selected-model") == ["qwen-coder"]


async def test_concurrent_sessions():
    server = ExtProcServer("keywords", delay=0.01)
    await server.start()
    client = await started(server)
    prompts = ["python code", "translate this", "deep analysis", "hello"] * 15
    decisions = await asyncio.gather(*(send_chat(client, chat_body(p)) for p in prompts))
    await client.close()
    await server.stop()
    expected = {"python code": ["qwen-coder"], "translate this": ["gemini-flash"],
                "deep analysis": ["gpt-4o"], "hello": []}
    for prompt, decision in zip(prompts, decisions):
        assert decision.outcome == "ok"
        assert values(decision.headers, "x-selected-model") == expected[prompt]
    assert len(server.streams) == len(prompts)


# The stand-in's own modes


@pytest.mark.parametrize("prompt, model", [
    ("Write a Python function", "qwen-coder"),
    ("please translate to French", "gemini-flash"),
    ("ask gemini", "gemini-flash"),
    ("a cost analysis", "gpt-4o"),
    ("what is the weather", None),
])
async def test_keywords_mode(prompt, model):
    server = ExtProcServer("keywords")
    await server.start()
    client = await started(server)
    decision = await send_chat(client, chat_body(prompt))
    await client.close()
    await server.stop()
    assert values(decision.headers, "x-selected-model") == ([model] if model else [])
    assert decision.body is None


async def test_vllm_mode_rewrites_auto_model():
    server = ExtProcServer("vllm")
    await server.start()
    client = await started(server, ProcessingOptions(request_body_mode="buffered", response_body_mode="buffered",
                                                     allow_mode_override=True))
    session = client.session()
    body = chat_body("some python code", model="MoM", stream=True)
    decision = await session.request("POST", "http", "gw", "/v1/chat/completions",
                                     CHAT_HEADERS + [("content-length", str(len(body)))], body, True)
    response = await session.response_headers(200, [("content-type", "text/event-stream")])
    session.observe_response_chunk(b"data: [DONE]\n\n", True)
    await asyncio.sleep(0.05)
    await session.close()
    await client.close()
    await server.stop()

    sent = json.loads(decision.body)
    assert sent["model"] == "qwen-coder"
    assert sent["stream_options"] == {"include_usage": True}
    assert values(decision.headers, "content-length") == [str(len(decision.body))]
    assert values(decision.headers, "x-selected-model") == ["qwen-coder"]
    assert values(decision.headers, "accept-encoding") == ["identity"]
    assert response.set_headers == {"x-vsr-selected-model": "qwen-coder"}
    assert session.response_mode.body == "streamed"
    assert server.streams[0][-1].response_body.body == b"data: [DONE]\n\n"


async def test_vllm_mode_keeps_named_model():
    server = ExtProcServer("vllm")
    await server.start()
    client = await started(server)
    decision = await send_chat(client, chat_body("translate this", model="gpt-4o-mini"))
    await client.close()
    await server.stop()
    assert decision.body is None
    assert values(decision.headers, "x-selected-model") == ["gemini-flash"]


async def test_vllm_mode_answers_models():
    server = ExtProcServer("vllm")
    await server.start()
    client = await started(server)
    session = client.session()
    decision = await session.request("GET", "http", "gw", "/v1/models", [], None)
    await session.close()
    await client.close()
    await server.stop()
    assert decision.outcome == "immediate_response"
    models = [entry["id"] for entry in json.loads(decision.immediate.body)["data"]]
    assert {"qwen-coder", "gpt-4o", "gemini-flash"} <= set(models)
    assert values(decision.immediate.headers, "content-type") == ["application/json"]


async def test_request_latency_report(capsys):
    """Print p50/p99 of session.request over a few hundred requests; no timing asserts."""
    server = ExtProcServer("vllm")
    await server.start()
    client = await started(server)
    body = chat_body("write a python function", model="MoM")
    latencies = []
    for _ in range(300):
        decision = await send_chat(client, body)
        assert decision.outcome == "ok"
        latencies.append(decision.latency_ms)
    await client.close()
    await server.stop()
    cuts = statistics.quantiles(latencies, n=100)
    with capsys.disabled():
        print(f"\next_proc session.request, headers + buffered body, new stream each, "
              f"{len(latencies)} requests: p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms")
