"""Tests for the chat completions <-> Anthropic Messages translation.

The request and response cases follow the shapes of OpenAI's and Anthropic's documented
examples (OpenAI's function-calling and vision examples; Anthropic's tool-use response and
its two streaming examples, "Basic streaming request" and "Streaming request with tool use").
The round trips post the translated request to the Anthropic stand-in over HTTP and check
that the `openai` SDK's own types accept the translated response.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from addons.anthropic_translate import (
    DEFAULT_MAX_TOKENS,
    MessagesStreamToChat,
    TranslationError,
    chat_to_messages,
    error_to_openai,
    messages_to_chat,
)
from addons.sse import SSEParser
from tests.standins.anthropic_api import AnthropicStandIn

WEATHER_FUNCTION = {
    "name": "get_current_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}
WEATHER_TOOL = {"type": "function", "function": WEATHER_FUNCTION}
BOARDWALK_URL = (
    "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/"
    "Gfp-wisconsin-madison-the-nature-boardwalk.jpg/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
)
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


# --- requests --------------------------------------------------------------------------------

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "plain_user_message",
        chat(user("Hello")),
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [text("Hello")]}],
         "max_tokens": DEFAULT_MAX_TOKENS},
    ),
    (
        "system_and_developer_to_top_level",
        chat({"role": "system", "content": "You are terse."},
             {"role": "developer", "content": [text("Answer in French.")]},
             user("Hi")),
        {"system": "You are terse.\n\nAnswer in French.", "messages": [{"role": "user", "content": [text("Hi")]}]},
    ),
    (
        "vision_http_url",
        chat(user([text("What's in this image?"), {"type": "image_url", "image_url": {"url": BOARDWALK_URL}}])),
        {"messages": [{"role": "user", "content": [
            text("What's in this image?"),
            {"type": "image", "source": {"type": "url", "url": BOARDWALK_URL}},
        ]}]},
    ),
    (
        "vision_data_url",
        chat(user([{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}", "detail": "low"}}])),
        {"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}},
        ]}]},
    ),
    (
        "pdf_file_part",
        chat(user([{"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}])),
        {"messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
        ]}]},
    ),
    (
        "assistant_tool_calls_and_tool_results",
        chat(
            user("What's the weather like in Boston and Paris today?"),
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_current_weather", "arguments": "{\"location\": \"Boston, MA\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_current_weather", "arguments": "{\"location\": \"Paris\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [text("18 C, rain")]},
            user("And tomorrow?"),
        ),
        {"messages": [
            {"role": "user", "content": [text("What's the weather like in Boston and Paris today?")]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_current_weather", "input": {"location": "Boston, MA"}},
                {"type": "tool_use", "id": "call_2", "name": "get_current_weather", "input": {"location": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "22 C, sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [text("18 C, rain")]},
                text("And tomorrow?"),
            ]},
        ]},
    ),
    (
        "assistant_text_with_empty_arguments",
        chat(user("Ping"), {"role": "assistant", "content": "Calling.", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "ping", "arguments": ""}}]}),
        {"messages": [
            {"role": "user", "content": [text("Ping")]},
            {"role": "assistant", "content": [text("Calling."), {"type": "tool_use", "id": "call_9", "name": "ping", "input": {}}]},
        ]},
    ),
    (
        "tool_result_without_text",
        chat(user("Ping"),
             {"role": "assistant", "tool_calls": [{"id": "call_3", "type": "function",
                                                   "function": {"name": "ping", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "call_3", "content": []}),
        {"messages": [
            {"role": "user", "content": [text("Ping")]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_3", "name": "ping", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_3"}]},
        ]},
    ),
    (
        "tools_and_auto_choice",
        chat(user("Weather in Boston?"), tools=[WEATHER_TOOL], tool_choice="auto"),
        {"tools": [{"name": "get_current_weather", "description": WEATHER_FUNCTION["description"],
                    "input_schema": WEATHER_FUNCTION["parameters"]}],
         "tool_choice": {"type": "auto"}},
    ),
    (
        "tool_without_parameters",
        chat(user("Now?"), tools=[{"type": "function", "function": {"name": "now"}}]),
        {"tools": [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]},
    ),
    (
        "tool_choice_required",
        chat(user("x"), tools=[WEATHER_TOOL], tool_choice="required"),
        {"tool_choice": {"type": "any"}},
    ),
    (
        "tool_choice_none",
        chat(user("x"), tools=[WEATHER_TOOL], tool_choice="none"),
        {"tool_choice": {"type": "none"}},
    ),
    (
        "tool_choice_named",
        chat(user("x"), tools=[WEATHER_TOOL],
             tool_choice={"type": "function", "function": {"name": "get_current_weather"}}),
        {"tool_choice": {"type": "tool", "name": "get_current_weather"}},
    ),
    (
        "parallel_tool_calls_false",
        chat(user("x"), tools=[WEATHER_TOOL], parallel_tool_calls=False),
        {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
    ),
    (
        "sampling_and_limits",
        chat(user("x"), max_tokens=100, temperature=0.7, top_p=0.9, stop=["\n\n", "END"], user="user_12345"),
        {"max_tokens": 100, "temperature": 0.7, "top_p": 0.9, "stop_sequences": ["\n\n", "END"],
         "metadata": {"user_id": "user_12345"}},
    ),
    (
        "max_completion_tokens_wins",
        chat(user("x"), max_tokens=100, max_completion_tokens=200, stop="END"),
        {"max_tokens": 200, "stop_sequences": ["END"]},
    ),
    (
        "reasoning_effort_to_thinking",
        chat(user("x"), reasoning_effort="medium"),
        {"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 2048 + DEFAULT_MAX_TOKENS},
    ),
]


@pytest.mark.parametrize(("body", "expected"), [case[1:] for case in REQUEST_CASES],
                         ids=[case[0] for case in REQUEST_CASES])
def test_chat_to_messages_cases(body: dict[str, Any], expected: dict[str, Any]) -> None:
    result = chat_to_messages(body)

    for key, value in expected.items():
        assert result[key] == value, key


def test_chat_to_messages_drops_openai_only_fields() -> None:
    body = chat(user("x"), stream=True, stream_options={"include_usage": True}, n=1, seed=42,
                presence_penalty=0.1, frequency_penalty=0.2, logit_bias={"50256": -100}, store=True,
                response_format={"type": "text"}, parallel_tool_calls=True, metadata={"a": "b"})

    result = chat_to_messages(body)

    assert result == {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [text("x")]}],
                      "max_tokens": DEFAULT_MAX_TOKENS, "stream": True}


def test_chat_to_messages_leaves_input_unchanged() -> None:
    body = chat(user("x"), tools=[WEATHER_TOOL], tool_choice="auto")
    before = json.dumps(body, sort_keys=True)

    chat_to_messages(body)

    assert json.dumps(body, sort_keys=True) == before


def test_tool_choice_without_tools_is_dropped() -> None:
    result = chat_to_messages(chat(user("x"), tool_choice="auto"))

    assert "tool_choice" not in result
    assert "tools" not in result


ERROR_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("n_above_one", chat(user("x"), n=3), r"n=3 .*set it to 1"),
    ("missing_model", {"messages": [user("x")]}, r"model must be a non-empty string"),
    ("no_messages", chat(), r"messages must be a non-empty list"),
    ("temperature_above_one", chat(user("x"), temperature=1.5), r"temperature 1\.5 .*between 0 and 1"),
    ("logprobs", chat(user("x"), logprobs=True), r"logprobs"),
    ("json_schema_format", chat(user("x"), response_format={"type": "json_schema", "json_schema": {}}),
     r"response_format type 'json_schema'.*tool"),
    ("audio_output", chat(user("x"), modalities=["text", "audio"]), r"audio output"),
    ("legacy_functions", chat(user("x"), functions=[WEATHER_FUNCTION]), r"send tools and tool_choice"),
    ("unknown_role", chat({"role": "function", "name": "f", "content": "1"}), r"role 'function'"),
    ("empty_user_message", chat(user("")), r"messages\[0\] \(user\) has no content"),
    ("invalid_arguments", chat(user("x"), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}),
     r"tool_calls\[0\]\.function\.arguments is not valid JSON"),
    ("arguments_not_object", chat(user("x"), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}),
     r"must encode a JSON object, got list"),
    ("tool_without_call_id", chat(user("x"), {"role": "tool", "content": "1"}), r"needs the tool_call_id"),
    ("gif_as_bmp", chat(user([{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}])),
     r"image of type 'image/bmp'"),
    ("image_not_base64", chat(user([{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}])),
     r"not base64-encoded"),
    ("image_ftp_url", chat(user([{"type": "image_url", "image_url": {"url": "ftp://host/a.png"}}])),
     r"http\(s\) URL or a data URL"),
    ("audio_input", chat(user([{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}])),
     r"type 'input_audio'"),
    ("file_id_part", chat(user([{"type": "file", "file": {"file_id": "file-abc"}}])), r"file_data"),
    ("custom_tool", chat(user("x"), tools=[{"type": "custom", "custom": {"name": "grammar"}}]),
     r"tools\[0\] has type 'custom'"),
    ("allowed_tools_choice", chat(user("x"), tools=[WEATHER_TOOL], tool_choice={"type": "allowed_tools"}),
     r"tool_choice .* is not supported"),
    ("reasoning_budget_above_max", chat(user("x"), reasoning_effort="high", max_completion_tokens=4096),
     r"max_completion_tokens 4096 must be larger than the thinking budget of 4096"),
    ("reasoning_with_temperature", chat(user("x"), reasoning_effort="low", temperature=0.2),
     r"temperature 0\.2 cannot be combined with reasoning_effort"),
    ("reasoning_with_forced_tool", chat(user("x"), tools=[WEATHER_TOOL], tool_choice="required",
                                       reasoning_effort="low"), r"forces a tool call"),
]


@pytest.mark.parametrize(("body", "pattern"), [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_chat_to_messages_rejects(body: dict[str, Any], pattern: str) -> None:
    with pytest.raises(TranslationError, match=pattern):
        chat_to_messages(body)


# --- responses -------------------------------------------------------------------------------

BASIC_RESPONSE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
    "model": "claude-3-7-sonnet-20250219", "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 2095, "output_tokens": 503},
}
TOOL_RESPONSE = {
    "id": "msg_01Aq9w938a90dw8q", "type": "message", "role": "assistant", "model": "claude-opus-4-1-20250805",
    "stop_reason": "tool_use", "stop_sequence": None,
    "content": [
        {"type": "text", "text": "<thinking>I need to call the get_weather function.</thinking>"},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
         "input": {"location": "San Francisco, CA", "unit": "celsius"}},
    ],
    "usage": {"input_tokens": 558, "cache_creation_input_tokens": 1, "cache_read_input_tokens": 2,
              "output_tokens": 48},
}


def test_messages_to_chat_text() -> None:
    result = messages_to_chat(BASIC_RESPONSE)

    assert result["id"] == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert result["object"] == "chat.completion"
    assert result["model"] == "claude-3-7-sonnet-20250219"
    assert result["choices"][0]["message"]["content"] == "Hi! My name is Claude."
    assert "tool_calls" not in result["choices"][0]["message"]
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"] == {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598,
                               "prompt_tokens_details": {"cached_tokens": 0}}
    ChatCompletion.model_validate(result)


def test_messages_to_chat_tool_use() -> None:
    result = messages_to_chat(TOOL_RESPONSE)
    message = result["choices"][0]["message"]

    assert message["content"] == "<thinking>I need to call the get_weather function.</thinking>"
    assert message["tool_calls"] == [{
        "id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"location\": \"San Francisco, CA\", \"unit\": \"celsius\"}"},
    }]
    assert result["choices"][0]["finish_reason"] == "tool_calls"
    assert result["usage"]["prompt_tokens"] == 561
    assert result["usage"]["total_tokens"] == 609
    assert result["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    ChatCompletion.model_validate(result)


def test_tool_only_reply_null_content() -> None:
    response = {**TOOL_RESPONSE, "content": TOOL_RESPONSE["content"][1:]}

    result = messages_to_chat(response)

    assert result["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(("stop_reason", "expected"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), (None, "stop"), ("something_new", "stop"),
])
def test_messages_to_chat_finish_reason(stop_reason: str | None, expected: str) -> None:
    result = messages_to_chat({**BASIC_RESPONSE, "stop_reason": stop_reason})

    assert result["choices"][0]["finish_reason"] == expected


def test_messages_to_chat_thinking_as_reasoning_content() -> None:
    response = {**BASIC_RESPONSE, "content": [
        {"type": "thinking", "thinking": "27 * 453 = 12231", "signature": "EqQB"},
        {"type": "redacted_thinking", "data": "abc"},
        {"type": "text", "text": "12,231"},
    ]}

    message = messages_to_chat(response)["choices"][0]["message"]

    assert message["content"] == "12,231"
    assert message["reasoning_content"] == "27 * 453 = 12231"


def test_messages_to_chat_model_fallback() -> None:
    response = {key: value for key, value in BASIC_RESPONSE.items() if key != "model"}

    assert messages_to_chat(response, requested_model="MoM")["model"] == "MoM"
    assert messages_to_chat(BASIC_RESPONSE, requested_model="MoM")["model"] == "claude-3-7-sonnet-20250219"


@pytest.mark.parametrize(("body", "status", "expected"), [
    ({"type": "error", "error": {"type": "not_found_error", "message": "The requested resource could not be found."}},
     404, {"message": "The requested resource could not be found.", "type": "not_found_error",
           "param": None, "code": "not_found_error"}),
    ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"},
     529, {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}),
    ({"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}},
     429, {"message": "Slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_error"}),
    ({"detail": "bad gateway"}, 502,
     {"message": "Anthropic returned HTTP 502: {\"detail\": \"bad gateway\"}", "type": "server_error",
      "param": None, "code": None}),
    ({}, 400, {"message": "Anthropic returned HTTP 400", "type": "invalid_request_error", "param": None, "code": None}),
])
def test_error_to_openai(body: dict[str, Any], status: int, expected: dict[str, Any]) -> None:
    assert error_to_openai(body, status) == {"error": expected}


# --- streams ---------------------------------------------------------------------------------


def anthropic_sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def chunks_of(stream: bytes) -> list[dict[str, Any] | str]:
    """Parse an OpenAI SSE stream into its JSON chunks, `[DONE]` kept as the string."""
    out: list[dict[str, Any] | str] = []
    for event in SSEParser().feed(stream):
        out.append(event.data if event.data == "[DONE]" else json.loads(event.data))
    return out


def convert(stream: bytes, model: str | None = None, include_usage: bool = False) -> tuple[bytes, MessagesStreamToChat]:
    converter = MessagesStreamToChat(model, include_usage)
    return converter.feed(stream) + converter.finish(), converter


def delta_content(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if isinstance(c, dict) and c["choices"])


# Anthropic's "Basic streaming request" example.
BASIC_STREAM = anthropic_sse(
    {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message",
     "role": "assistant", "content": [], "model": "claude-opus-4-1-20250805", "stop_reason": None,
     "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
)

# Anthropic's "Streaming request with tool use" example, with fewer text deltas.
TOOL_STREAM = anthropic_sse(
    {"type": "message_start", "message": {"id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message",
     "role": "assistant", "model": "claude-opus-4-1-20250805", "stop_sequence": None,
     "usage": {"input_tokens": 472, "output_tokens": 2}, "content": [], "stop_reason": None}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Okay"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ", let's check"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use",
     "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"San Francisc"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "o, CA\""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ", \"unit\": \"fah"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "renheit\"}"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 89}},
    {"type": "message_stop"},
)


def test_stream_basic_text() -> None:
    output, converter = convert(BASIC_STREAM, include_usage=True)
    chunks = chunks_of(output)

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "Hello"}, {"content": "!"}]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"] == {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40,
                                  "prompt_tokens_details": {"cached_tokens": 0}}
    assert chunks[5] == "[DONE]"
    assert len(chunks) == 6
    assert all(c["id"] == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY" for c in chunks[:5])
    assert all(c["model"] == "claude-opus-4-1-20250805" for c in chunks[:5])
    assert all(c["object"] == "chat.completion.chunk" for c in chunks[:5])
    assert converter.usage == {"input_tokens": 25, "output_tokens": 15}
    assert output.endswith(b"data: [DONE]\n\n")
    for chunk in chunks[:5]:
        ChatCompletionChunk.model_validate(chunk)


def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    output, converter = convert(BASIC_STREAM, include_usage=False)
    chunks = chunks_of(output)

    assert all(c["choices"] for c in chunks[:-1])
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-1] == "[DONE]"
    assert converter.usage == {"input_tokens": 25, "output_tokens": 15}


def test_stream_tool_calls() -> None:
    output, converter = convert(TOOL_STREAM)
    chunks = [c for c in chunks_of(output) if isinstance(c, dict)]
    tool_deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]

    assert delta_content(chunks) == "Okay, let's check"
    assert tool_deltas[0] == {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                              "function": {"name": "get_weather", "arguments": ""}}
    assert all(d["index"] == 0 and "id" not in d for d in tool_deltas[1:])
    arguments = "".join(d["function"]["arguments"] for d in tool_deltas)
    assert json.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert converter.finish_reason == "tool_calls"
    assert converter.usage == {"input_tokens": 472, "output_tokens": 89}
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)


def test_stream_two_tool_calls_get_own_indexes() -> None:
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_2", "model": "claude-haiku-4-5", "usage": {"input_tokens": 9}}},
        *[event for index, name in ((0, "a"), (1, "b")) for event in (
            {"type": "content_block_start", "index": index,
             "content_block": {"type": "tool_use", "id": f"toolu_{name}", "name": name, "input": {}}},
            {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
            {"type": "content_block_stop", "index": index},
        )],
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 20}},
    )

    chunks = [c for c in chunks_of(convert(stream)[0]) if isinstance(c, dict)]
    starts = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or [] if "id" in d]

    assert [(d["index"], d["id"]) for d in starts] == [(0, "toolu_a"), (1, "toolu_b")]


def test_stream_usage_only_on_message_delta() -> None:
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_2", "type": "message", "role": "assistant",
         "content": [], "model": "claude-sonnet-4-20250514"}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"input_tokens": 4522, "cache_creation_input_tokens": 4511, "cache_read_input_tokens": 0,
                   "output_tokens": 5}},
        {"type": "message_stop"},
    )

    output, converter = convert(stream, include_usage=True)
    usage = chunks_of(output)[-2]["usage"]

    assert usage["prompt_tokens"] == 9033
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == 9038
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert converter.usage["cache_creation_input_tokens"] == 4511


def test_stream_usage_takes_last_cumulative_value() -> None:
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_3", "model": "claude-haiku-4-5",
         "usage": {"input_tokens": 10, "cache_read_input_tokens": 2000, "output_tokens": 1}}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 89}},
    )

    output, converter = convert(stream, include_usage=True)
    chunks = chunks_of(output)
    finishes = [c for c in chunks if isinstance(c, dict) and c["choices"] and c["choices"][0]["finish_reason"]]

    assert chunks[-2]["usage"] == {"prompt_tokens": 2010, "completion_tokens": 89, "total_tokens": 2099,
                                   "prompt_tokens_details": {"cached_tokens": 2000}}
    assert converter.usage == {"input_tokens": 10, "cache_read_input_tokens": 2000, "output_tokens": 89}
    assert len(finishes) == 1


def test_stream_error_event() -> None:
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_4", "model": "claude-haiku-4-5", "usage": {"input_tokens": 3}}},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )

    chunks = chunks_of(convert(stream)[0])

    assert chunks[1] == {"error": {"message": "Overloaded", "type": "server_error", "param": None,
                                   "code": "overloaded_error"}}
    assert chunks[-1] == "[DONE]"


def test_stream_model_fallback_and_thinking() -> None:
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_5"}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Step 1"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}},
    )

    chunks = [c for c in chunks_of(convert(stream, model="MoM")[0]) if isinstance(c, dict)]

    assert {c["model"] for c in chunks} == {"MoM"}
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""},
                                                          {"reasoning_content": "Step 1"}]


def test_stream_finish_twice_and_feed_after_finish() -> None:
    converter = MessagesStreamToChat("m", include_usage=False)
    converter.feed(BASIC_STREAM)
    first = converter.finish()

    assert first.endswith(b"data: [DONE]\n\n")
    assert converter.finish() == b""
    assert converter.feed(BASIC_STREAM) == b""


def test_stream_utf8_split_inside_character() -> None:
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_6", "model": "m"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Grüße, 世界"}},
    ).replace(b"\\u00fc", "ü".encode()).replace(b"\\u00df", "ß".encode())
    converter = MessagesStreamToChat(None)
    output = b"".join(converter.feed(stream[i:i + 1]) for i in range(len(stream))) + converter.finish()

    assert delta_content(chunks_of(output)) == "Grüße, 世界"


RECORDED_STREAMS = [BASIC_STREAM, TOOL_STREAM, BASIC_STREAM.replace(b"\n", b"\r\n")]


@settings(max_examples=150, deadline=None)
@given(stream_index=st.sampled_from(range(len(RECORDED_STREAMS))), cuts=st.lists(st.integers(min_value=0)))
def test_stream_any_chunk_split_same_output(stream_index: int, cuts: list[int]) -> None:
    stream = RECORDED_STREAMS[stream_index]
    positions = sorted({cut % (len(stream) + 1) for cut in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *positions], [*positions, len(stream)])]
    whole, _ = convert(stream, model="m", include_usage=True)

    converter = MessagesStreamToChat("m", include_usage=True)
    split = b"".join(converter.feed(piece) for piece in pieces) + converter.finish()

    # `created` comes from the clock, so compare the chunks without it.
    def without_created(output: bytes) -> list[Any]:
        return [c if isinstance(c, str) else {k: v for k, v in c.items() if k != "created"} for c in chunks_of(output)]

    assert without_created(split) == without_created(whole)


# --- round trips through the Anthropic stand-in ----------------------------------------------


@pytest.fixture(scope="module")
def standin() -> Any:
    server = AnthropicStandIn().start_in_thread()
    yield server
    server.stop_in_thread()


def post_messages(server: AnthropicStandIn, body: dict[str, Any]) -> httpx.Response:
    headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    return httpx.post(f"{server.url}/v1/messages", json=body, headers=headers, timeout=10)


def test_round_trip_plain(standin: AnthropicStandIn) -> None:
    standin.reset()
    standin.next_answer = "Paris is the capital of France."
    request = chat(user("What is the capital of France?"), max_completion_tokens=50, stream=False)

    response = post_messages(standin, chat_to_messages(request))
    completion = ChatCompletion.model_validate(messages_to_chat(response.json(), "claude-sonnet-4-5"))

    assert response.status_code == 200
    assert standin.received[-1].json["max_tokens"] == 50
    assert completion.choices[0].message.content == "Paris is the capital of France."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 6
    assert completion.usage.completion_tokens == 6
    assert completion.model == "claude-sonnet-4-5"


def test_round_trip_tool_call(standin: AnthropicStandIn) -> None:
    standin.reset()
    request = chat(user("Weather in Boston?"), tools=[WEATHER_TOOL], tool_choice="required")

    response = post_messages(standin, chat_to_messages(request))
    completion = ChatCompletion.model_validate(messages_to_chat(response.json()))
    call = completion.choices[0].message.tool_calls[0]

    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"location": "stand-in", "unit": "celsius"}

    follow_up = chat(
        user("Weather in Boston?"),
        completion.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 C"},
        tools=[WEATHER_TOOL],
    )
    answer = messages_to_chat(post_messages(standin, chat_to_messages(follow_up)).json())

    assert standin.received[-1].json["messages"][-1]["content"][0]["tool_use_id"] == call.id
    assert ChatCompletion.model_validate(answer).choices[0].finish_reason == "stop"


def test_round_trip_error(standin: AnthropicStandIn) -> None:
    standin.reset()
    standin.next_error = (429, None, None)

    response = post_messages(standin, chat_to_messages(chat(user("x"))))
    error = error_to_openai(response.json(), response.status_code)["error"]

    assert response.status_code == 429
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_error"
    assert error["message"]


def stream_round_trip(server: AnthropicStandIn, request: dict[str, Any], include_usage: bool) -> tuple[list[Any], MessagesStreamToChat]:
    body = chat_to_messages(request)
    converter = MessagesStreamToChat(request["model"], include_usage)
    output = bytearray()
    headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        for raw in response.iter_raw():
            output += converter.feed(raw)
    output += converter.finish()
    return chunks_of(bytes(output)), converter


def test_round_trip_stream(standin: AnthropicStandIn) -> None:
    standin.reset()
    standin.next_chunks = ["Bonjour", " le", " monde"]
    request = chat(user("Say hello in French"), stream=True, stream_options={"include_usage": True})

    chunks, converter = stream_round_trip(standin, request, include_usage=True)
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks[:-1]]

    assert "stream_options" not in standin.received[-1].json
    assert standin.received[-1].json["stream"] is True
    assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) == "Bonjour le monde"
    assert parsed[-2].choices[0].finish_reason == "stop"
    assert parsed[-1].choices == []
    assert parsed[-1].usage is not None
    assert parsed[-1].usage.prompt_tokens == 4
    assert parsed[-1].usage.completion_tokens == 3
    assert converter.usage["output_tokens"] == 3
    assert chunks[-1] == "[DONE]"


def test_round_trip_stream_tool_call(standin: AnthropicStandIn) -> None:
    standin.reset()
    request = chat(user("Weather in Boston?"), tools=[WEATHER_TOOL], stream=True)

    chunks, converter = stream_round_trip(standin, request, include_usage=False)
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks[:-1]]
    calls = [call for c in parsed for call in c.choices[0].delta.tool_calls or []]

    assert calls[0].id is not None
    assert calls[0].function.name == "get_current_weather"
    assert json.loads("".join(call.function.arguments or "" for call in calls)) == {"location": "stand-in", "unit": "celsius"}
    assert parsed[-1].choices[0].finish_reason == "tool_calls"
    assert all(c.usage is None for c in parsed)
    assert converter.usage is not None
