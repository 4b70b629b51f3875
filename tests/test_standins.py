"""Drive each provider stand-in with the official SDKs, no gateway in between.

These tests pin the stand-ins' wire formats: if an SDK can parse what a stand-in sends,
the gateway's end-to-end tests built on them exercise the formats the SDKs expect.
The stand-in fixtures come from tests/standins/fixtures.py through tests/conftest.py.
"""

from __future__ import annotations

import functools
import gzip
import json
import ssl
import time

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.standins.providers import (
    AnthropicStandIn,
    GeminiStandIn,
    OllamaStandIn,
    OpenAIStandIn,
    TestCA,
)

USER = [{"role": "user", "content": "what is the weather today"}]  # 5 words
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# One HTTP client per library for the whole module: building one loads the CA bundle,
# which costs about 0.2 s, more than most of these tests take.
@functools.cache
def raw_http() -> httpx.Client:
    return httpx.Client(timeout=10)


@functools.cache
def sdk_http(library: str) -> httpx.Client:
    return openai.DefaultHttpxClient() if library == "openai" else anthropic.DefaultHttpxClient()


def openai_client(standin: OpenAIStandIn, prefix: str = "/v1", key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=standin.url + prefix, max_retries=0, http_client=sdk_http("openai"))


def sse_payloads(body: str) -> list[str]:
    """Return the `data:` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


# -- OpenAI --------------------------------------------------------------------------------


def test_openai_chat_names_provider_and_model(openai_standin: OpenAIStandIn) -> None:
    result = openai_client(openai_standin).chat.completions.create(model="gpt-4o-mini", messages=USER)

    assert result.choices[0].message.content == "openai stand-in answer to model gpt-4o-mini"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.prompt_tokens == 5
    assert result.usage.completion_tokens == 6
    assert result.usage.total_tokens == 11
    received = openai_standin.received[0]
    assert received.path == "/v1/chat/completions"
    assert received.header("authorization") == "Bearer sk-test"
    assert "authorization" in received.header_names()  # the SDK's own spelling
    assert received.json["model"] == "gpt-4o-mini"


def test_openai_stream_without_usage_option(openai_standin: OpenAIStandIn) -> None:
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    raw = raw_http().post(openai_standin.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
    payloads = sse_payloads(raw.text)

    assert raw.headers["content-type"].startswith("text/event-stream")
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    stream = openai_client(openai_standin).chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "openai stand-in answer to model gpt-4o"


def test_openai_stream_with_include_usage(openai_standin: OpenAIStandIn) -> None:
    body = {"model": "gpt-4o", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    raw = raw_http().post(openai_standin.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
    chunks = [json.loads(p) for p in sse_payloads(raw.text)[:-1]]

    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 11

    stream = openai_client(openai_standin).chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    usages = [c.usage for c in stream if c.usage is not None]
    assert len(usages) == 1
    assert usages[0].prompt_tokens == 5


def test_openai_usage_override_details(openai_standin: OpenAIStandIn) -> None:
    openai_standin.next_usage = {
        "prompt_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    client = openai_client(openai_standin)
    first = client.chat.completions.create(model="o3-mini", messages=USER)
    second = client.chat.completions.create(model="o3-mini", messages=USER)

    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens == 100
    assert first.usage.total_tokens == 106
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 40
    assert first.usage.completion_tokens_details is not None
    assert first.usage.completion_tokens_details.reasoning_tokens == 3
    assert second.usage.prompt_tokens == 5  # next_usage applies once


@pytest.mark.parametrize("stream", [False, True])
def test_openai_tool_call(openai_standin: OpenAIStandIn, stream: bool) -> None:
    client = openai_client(openai_standin)
    if not stream:
        result = client.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER_TOOL])
        call = result.choices[0].message.tool_calls[0]
        assert result.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "stand-in"}
        return
    arguments, names, finish = "", [], None
    for chunk in client.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER_TOOL], stream=True):
        for call in chunk.choices[0].delta.tool_calls or []:
            names += [call.function.name] if call.function.name else []
            arguments += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"]
    assert json.loads(arguments) == {"city": "stand-in"}
    assert finish == "tool_calls"


def test_openai_tool_result_gets_text(openai_standin: OpenAIStandIn) -> None:
    messages = USER + [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    result = openai_client(openai_standin).chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])
    assert result.choices[0].message.content == "openai stand-in answer to model gpt-4o"


def test_openai_rate_limit_error(openai_standin: OpenAIStandIn) -> None:
    body = openai_standin.error_body(429, "Rate limit reached for gpt-4o.")
    openai_standin.next_error = (429, body, {"retry-after": "7"})
    client = openai_client(openai_standin)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert "Rate limit reached" in caught.value.message
    assert client.chat.completions.create(model="gpt-4o", messages=USER).choices  # one-shot


def test_openai_default_error_bodies(openai_standin: OpenAIStandIn) -> None:
    openai_standin.always_error = (500, None, None)
    with pytest.raises(openai.InternalServerError) as caught:
        openai_client(openai_standin).models.list()
    assert caught.value.type == "server_error"

    openai_standin.always_error = None
    openai_standin.known_models = ["gpt-4o"]
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client(openai_standin).chat.completions.create(model="gpt-9", messages=USER)
    assert missing.value.code == "model_not_found"


def test_openai_auth_checks(openai_standin: OpenAIStandIn) -> None:
    openai_standin.require_key = "sk-right"
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(openai_standin, key="sk-wrong-key").models.list()
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-key" not in caught.value.message  # the key is masked

    no_key = raw_http().get(openai_standin.url + "/v1/models")
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "invalid_request_error"
    assert [m.id for m in openai_client(openai_standin, key="sk-right").models.list()][0] == "gpt-4o-mini"


def test_openai_gzip_json(openai_standin: OpenAIStandIn) -> None:
    openai_standin.gzip = True
    body = {"model": "gpt-4o", "messages": USER}
    headers = {"Authorization": "Bearer k", "Accept-Encoding": "gzip"}
    client = raw_http()
    raw = client.post(openai_standin.url + "/v1/chat/completions", json=body, headers=headers)
    with client.stream("POST", openai_standin.url + "/v1/chat/completions", json=body, headers=headers) as streamed:
        wire = b"".join(streamed.iter_raw())

    assert raw.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(wire))["object"] == "chat.completion"
    result = openai_client(openai_standin).chat.completions.create(model="gpt-4o", messages=USER)
    assert result.choices[0].message.content == "openai stand-in answer to model gpt-4o"


def test_openai_responses_api(openai_standin: OpenAIStandIn) -> None:
    client = openai_client(openai_standin)
    result = client.responses.create(model="gpt-4.1", input="tell me a joke")
    assert result.output_text == "openai stand-in answer to model gpt-4.1"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (4, 6)

    openai_standin.next_usage = {"input_tokens_details": {"cached_tokens": 2}}
    events = list(client.responses.create(model="gpt-4.1", input="tell me a joke", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == result.output_text
    assert events[-1].response.usage.input_tokens_details.cached_tokens == 2


def test_openai_embeddings_and_models(openai_standin: OpenAIStandIn) -> None:
    client = openai_client(openai_standin)
    result = client.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])
    floats = raw_http().post(
        openai_standin.url + "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "one two", "encoding_format": "float"},
        headers={"Authorization": "Bearer k"},
    ).json()

    assert openai_standin.received[0].json["encoding_format"] == "base64"  # the SDK's default
    assert len(result.data) == 2
    assert result.data[0].embedding == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    assert result.usage.prompt_tokens == 3
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


def test_openai_chunks_delay_and_pieces(openai_standin: OpenAIStandIn) -> None:
    client = openai_client(openai_standin)
    openai_standin.chunks = 20
    openai_standin.delay_per_chunk = 0.01
    started = time.monotonic()
    contents = [c.choices[0].delta.content for c in client.chat.completions.create(model="m", messages=USER, stream=True) if c.choices and c.choices[0].delta.content]
    elapsed = time.monotonic() - started

    assert len(contents) == 20
    assert elapsed >= 0.19
    openai_standin.next_chunks = ["Hel", "lo", " wor", "ld"]
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(model="m", messages=USER, stream=True) if c.choices and c.choices[0].delta.content]
    assert pieces == ["Hel", "lo", " wor", "ld"]


def test_openai_client_disconnect_counted(openai_standin: OpenAIStandIn) -> None:
    openai_standin.chunks = 50
    openai_standin.delay_per_chunk = 0.02
    body = {"model": "m", "messages": USER, "stream": True}
    with raw_http().stream("POST", openai_standin.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}) as response:
        next(response.iter_raw())
    deadline = time.monotonic() + 3
    while openai_standin.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert openai_standin.disconnects == 1


async def test_openai_async_context_manager() -> None:
    async with OpenAIStandIn() as standin:
        client = openai.AsyncOpenAI(api_key="k", base_url=standin.url + "/v1", max_retries=0)
        result = await client.chat.completions.create(model="gpt-4o", messages=USER)
        await client.close()
    assert result.choices[0].message.content == "openai stand-in answer to model gpt-4o"
    assert standin.hostport.startswith("127.0.0.1:")


def test_session_standin_reset(openai_standin_session: OpenAIStandIn) -> None:
    assert openai_standin_session.received == []
    assert openai_standin_session.chunks is None
    openai_standin_session.chunks = 3  # must not leak into the next user of the session server
    openai_client(openai_standin_session).models.list()
    assert len(openai_standin_session.received) == 1


# -- Gemini --------------------------------------------------------------------------------


@functools.cache
def _genai_client(url: str) -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=url,
        retry_options=genai_types.HttpRetryOptions(attempts=1),
        httpx_client=raw_http(),
    )
    return genai.Client(api_key="gemini-key", http_options=options)


def genai_client(standin: GeminiStandIn) -> genai.Client:
    # Building a genai.Client takes about half a second, so the genai tests share the
    # session's Gemini stand-in and one client for its URL.
    return _genai_client(standin.url)


def test_gemini_generate_content(gemini_standin_session: GeminiStandIn) -> None:
    client = genai_client(gemini_standin_session)
    result = client.models.generate_content(model="gemini-2.5-flash", contents="what is the weather today")

    assert result.text == "gemini stand-in answer to model gemini-2.5-flash"
    usage = result.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (5, 6, 11)
    assert usage.thoughts_token_count is None  # zero counts are left out, as Gemini does
    received = gemini_standin_session.received[0]
    assert received.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert received.header("x-goog-api-key") == "gemini-key"


def test_gemini_stream_repeats_usage(gemini_standin_session: GeminiStandIn) -> None:
    gemini_standin_session.next_usage = {"thoughtsTokenCount": 10, "cachedContentTokenCount": 2}
    client = genai_client(gemini_standin_session)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="hi there"))

    assert "".join(c.text or "" for c in chunks) == "gemini stand-in answer to model gemini-2.5-pro"
    assert all(c.usage_metadata is not None for c in chunks)
    last = chunks[-1].usage_metadata
    assert (last.candidates_token_count, last.thoughts_token_count, last.cached_content_token_count) == (6, 10, 2)
    assert last.total_token_count == 2 + 6 + 10
    assert [c.usage_metadata.candidates_token_count for c in chunks] == [1, 2, 3, 4, 5, 6]
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert gemini_standin_session.received[0].query["alt"] == "sse"


def test_gemini_native_wire_details(gemini_standin: GeminiStandIn) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "a b c"}]}]}
    url = gemini_standin.url + "/v1beta/models/gemini-2.5-flash"
    sse_body = raw_http().post(url + ":streamGenerateContent?alt=sse&key=query-key", json=body).content
    array_body = raw_http().post(url + ":streamGenerateContent", json=body, headers={"x-goog-api-key": "k"}).json()
    no_key = raw_http().post(url + ":generateContent", json=body)

    assert sse_body.count(b"\r\n\r\n") == 6  # Gemini ends each event with CRLF CRLF
    assert len(array_body) == 6
    assert array_body[-1]["usageMetadata"]["promptTokenCount"] == 3
    assert no_key.status_code == 403
    assert no_key.json()["error"]["status"] == "PERMISSION_DENIED"


def test_gemini_native_function_call(gemini_standin_session: GeminiStandIn) -> None:
    declaration = genai_types.FunctionDeclaration(
        name="get_weather",
        parameters=genai_types.Schema(type="OBJECT", properties={"city": genai_types.Schema(type="STRING")}),
    )
    config = genai_types.GenerateContentConfig(
        tools=[genai_types.Tool(function_declarations=[declaration])],
        automatic_function_calling=genai_types.AutomaticFunctionCallingConfig(disable=True),
    )
    client = genai_client(gemini_standin_session)
    result = client.models.generate_content(model="gemini-2.5-flash", contents="weather?", config=config)

    assert result.function_calls is not None
    assert result.function_calls[0].name == "get_weather"
    assert result.function_calls[0].args == {"city": "stand-in"}


def test_gemini_native_rate_limit(gemini_standin_session: GeminiStandIn) -> None:
    gemini_standin_session.next_error = (429, None, None)
    client = genai_client(gemini_standin_session)
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"


def test_gemini_openai_compatible(gemini_standin: GeminiStandIn) -> None:
    client = openai_client(gemini_standin, prefix="/v1beta/openai/", key="gemini-key")
    result = client.chat.completions.create(model="gemini-2.5-flash", messages=USER)
    chunks = list(client.chat.completions.create(model="gemini-2.5-flash", messages=USER, stream=True))

    assert result.choices[0].message.content == "gemini stand-in answer to model gemini-2.5-flash"
    assert gemini_standin.received[0].header("authorization") == "Bearer gemini-key"
    # Gemini sends usage on the finish chunk even without stream_options.include_usage.
    assert [c.usage is not None for c in chunks] == [False] * 5 + [True]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.total_tokens == 11
    assert client.models.list().data[0].id == "models/gemini-2.5-flash"
    assert len(client.embeddings.create(model="gemini-embedding-001", input="x").data[0].embedding) == 16


# -- Anthropic -----------------------------------------------------------------------------


def anthropic_client(standin: AnthropicStandIn) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=standin.url, max_retries=0, http_client=sdk_http("anthropic"))


def test_anthropic_message(anthropic_standin: AnthropicStandIn) -> None:
    message = anthropic_client(anthropic_standin).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, system="be brief", messages=USER
    )

    assert message.content[0].text == "anthropic stand-in answer to model claude-sonnet-4-5"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 6)
    assert message.usage.cache_read_input_tokens == 0
    assert anthropic_standin.received[0].header("anthropic-version")


def test_anthropic_stream_event_order(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.next_usage = {"cache_read_input_tokens": 30, "cache_creation_input_tokens": 4}
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": USER, "stream": True}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    raw = raw_http().post(anthropic_standin.url + "/v1/messages", json=body, headers=headers).text
    names = [line[len("event: ") :] for line in raw.splitlines() if line.startswith("event: ")]
    events = [json.loads(p) for p in sse_payloads(raw)]

    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert [e["type"] for e in events] == names
    assert events[0]["message"]["usage"]["output_tokens"] == 1
    assert events[-2]["usage"]["output_tokens"] == 6  # cumulative, not a delta
    assert events[-2]["usage"]["cache_read_input_tokens"] == 30


def test_anthropic_sdk_stream_final_message(anthropic_standin: AnthropicStandIn) -> None:
    anthropic_standin.next_usage = {"cache_read_input_tokens": 30}
    with anthropic_client(anthropic_standin).messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "anthropic stand-in answer to model claude-sonnet-4-5"
    assert final.usage.output_tokens == 6
    assert final.usage.input_tokens == 5
    assert final.usage.cache_read_input_tokens == 30


def test_anthropic_tool_use_stream(anthropic_standin: AnthropicStandIn) -> None:
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with anthropic_client(anthropic_standin).messages.stream(model="claude-sonnet-4-5", max_tokens=100, tools=[tool], messages=USER) as stream:
        final = stream.get_final_message()

    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"city": "stand-in"}


def test_anthropic_errors(anthropic_standin: AnthropicStandIn) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER}
    no_version = raw_http().post(anthropic_standin.url + "/v1/messages", json=body, headers={"x-api-key": "k"})
    no_key = raw_http().post(anthropic_standin.url + "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    anthropic_standin.next_error = (429, None, {"retry-after": "3"})
    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic_client(anthropic_standin).messages.create(**body)

    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.body["error"]["type"] == "rate_limit_error"


# -- Ollama --------------------------------------------------------------------------------


def test_ollama_openai_stream_usage(ollama_standin: OllamaStandIn) -> None:
    url = ollama_standin.url + "/v1/chat/completions"
    body = {"model": "qwen2.5-coder:7b", "messages": USER, "stream": True}
    plain = [json.loads(p) for p in sse_payloads(raw_http().post(url, json=body).text)[:-1]]
    body["stream_options"] = {"include_usage": True}
    with_usage = [json.loads(p) for p in sse_payloads(raw_http().post(url, json=body).text)[:-1]]

    assert all("usage" not in chunk for chunk in plain)
    assert all("usage" not in chunk for chunk in with_usage[:-1])
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    client = openai_client(ollama_standin, key="ollama")
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(model="qwen2.5-coder:7b", messages=USER, stream=True))
    assert text == "ollama stand-in answer to model qwen2.5-coder:7b"


def test_ollama_native_chat(ollama_standin: OllamaStandIn) -> None:
    body = {"model": "qwen2.5-coder:7b", "messages": USER}
    streamed = raw_http().post(ollama_standin.url + "/api/chat", json=body)
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    single = raw_http().post(ollama_standin.url + "/api/chat", json={**body, "stream": False}).json()

    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    assert [line["done"] for line in lines] == [False] * 6 + [True]
    assert "".join(line["message"]["content"] for line in lines) == "ollama stand-in answer to model qwen2.5-coder:7b"
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (5, 6)
    assert single["message"]["content"] == "ollama stand-in answer to model qwen2.5-coder:7b"
    assert single["done_reason"] == "stop"


def test_ollama_tags_and_missing_model(ollama_standin: OllamaStandIn) -> None:
    ollama_standin.known_models = ["llama3.2:3b"]
    tags = raw_http().get(ollama_standin.url + "/api/tags").json()
    native = raw_http().post(ollama_standin.url + "/api/chat", json={"model": "nope:1b", "messages": USER})

    assert [m["name"] for m in tags["models"]] == ["llama3.2:3b"]
    assert native.status_code == 404
    assert native.json() == {"error": 'model "nope:1b" not found, try pulling it first'}
    with pytest.raises(openai.NotFoundError):
        openai_client(ollama_standin).chat.completions.create(model="nope:1b", messages=USER)


# -- TLS -----------------------------------------------------------------------------------


def test_https_standin_trusted_by_ca(tls_ca: TestCA) -> None:
    with OpenAIStandIn(tls=True, host_names=["api.openai.com"]) as standin:
        assert standin.url.startswith("https://127.0.0.1:")
        assert standin.ca_pem_path == tls_ca.ca_pem_path
        trusted = httpx.Client(verify=tls_ca.client_context())
        by_name = trusted.get(f"https://localhost:{standin.port}/v1/models", headers={"Authorization": "Bearer k"})
        client = openai.OpenAI(api_key="k", base_url=standin.url + "/v1", http_client=trusted, max_retries=0)
        result = client.chat.completions.create(model="gpt-4o", messages=USER)
        with pytest.raises(httpx.ConnectError):
            httpx.get(standin.url + "/v1/models", verify=ssl.create_default_context())

    assert by_name.status_code == 200
    assert result.choices[0].message.content == "openai stand-in answer to model gpt-4o"
    trusted.close()
