"""Tests for reading usage from provider replies, whole and streamed, and for estimates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from addons import tokens
from addons.sse import SSEParser
from addons.usage import UsageTracker, request_text, usage_from_body
from addons.usage_model import (
    Usage,
    anthropic_usage,
    gemini_usage,
    openai_chat_usage,
    openai_responses_usage,
)


def sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    out = b""
    for name, data in events:
        if name:
            out += f"event: {name}\n".encode()
        payload = data if isinstance(data, str) else json.dumps(data)
        out += f"data: {payload}\n\n".encode()
    return out


def track_stream(api: str, provider: str, stream: bytes, chunk_size: int = 7) -> UsageTracker:
    tracker = UsageTracker(api, provider)
    parser = SSEParser()
    for start in range(0, len(stream), chunk_size):
        for event in parser.feed(stream[start:start + chunk_size]):
            tracker.feed_event(event)
    for event in parser.close():
        tracker.feed_event(event)
    return tracker


# --- OpenAI chat completions -------------------------------------------------------------

OPENAI_CACHED = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Cached answer."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
              "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
}


def test_openai_cached_tokens_are_part_of_prompt() -> None:
    usage = usage_from_body("chat_completions", "openai", OPENAI_CACHED)

    assert usage.input_tokens == 2006
    assert usage.cached_input_tokens == 1920
    assert usage.output_tokens == 300
    assert usage.total_tokens == 2306
    assert usage.source == "provider"
    assert usage.response_model == "gpt-4o-2024-08-06"


def test_openai_reasoning_is_part_of_completion() -> None:
    body = {"model": "o3-mini-2025-01-31", "choices": [],
            "usage": {"prompt_tokens": 14746, "completion_tokens": 1944, "total_tokens": 16690,
                      "completion_tokens_details": {"reasoning_tokens": 1360}}}

    usage = usage_from_body("chat_completions", "openai", body)

    assert usage.output_tokens == 1944
    assert usage.reasoning_tokens == 1360
    assert usage.total_tokens == 16690


def test_openai_documented_chat_example() -> None:
    body = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant",
                         "content": "Hello! How can I assist you today?"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}}
    tracker = UsageTracker("chat_completions", "openai")

    tracker.feed_json(body)

    assert tracker.result().counts() == (19, 0, 0, 10, 0)
    assert tracker.text == "Hello! How can I assist you today?"


def test_openai_stream_with_tool_call_and_usage_chunk() -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    stream = sse(
        (None, {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {"content": "Checking "}}]}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}}]}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "{\"city\": "}}]}}]}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "\"Paris\"}"}}]}}]}),
        (None, {**chunk, "choices": [], "usage": {"prompt_tokens": 82, "completion_tokens": 17,
                                                  "total_tokens": 99}}),
        (None, "[DONE]"),
    )

    tracker = track_stream("chat_completions", "openai", stream)

    assert tracker.result().counts() == (82, 0, 0, 17, 0)
    assert tracker.text == "Checking "
    assert tracker.tool_calls == [("get_weather", '{"city": "Paris"}')]


def test_openai_stream_without_usage_is_none() -> None:
    stream = sse((None, {"model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
                 (None, "[DONE]"))

    usage = track_stream("chat_completions", "openai", stream).result()

    assert usage.source == "none"
    assert usage.total_tokens is None
    assert usage.response_model == "gpt-4o"


def test_ollama_openai_endpoint_usage() -> None:
    # Ollama's OpenAI-compatible endpoint sends the same final usage-only chunk.
    stream = sse((None, {"model": "qwen2.5-coder:7b", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": "def f(): pass"}}]}),
                 (None, {"model": "qwen2.5-coder:7b", "object": "chat.completion.chunk",
                         "choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 6,
                                                  "total_tokens": 37}}))

    usage = track_stream("chat_completions", "openai", stream).result()

    assert usage.counts() == (31, 0, 0, 6, 0)
    assert usage.response_model == "qwen2.5-coder:7b"


# --- OpenAI Responses --------------------------------------------------------------------

def test_responses_reasoning_is_part_of_output() -> None:
    body = {"id": "resp_1", "object": "response", "model": "o3-2025-04-16", "status": "completed",
            "output": [{"type": "reasoning", "summary": []},
                       {"type": "message", "content": [{"type": "output_text", "text": "42"}]}],
            "usage": {"input_tokens": 14746, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 1944, "output_tokens_details": {"reasoning_tokens": 1360},
                      "total_tokens": 16690}}
    tracker = UsageTracker("responses", "openai")

    tracker.feed_json(body)
    usage = tracker.result()

    assert usage.output_tokens == 1944
    assert usage.reasoning_tokens == 1360
    assert usage.total_tokens == 16690
    assert tracker.text == "42"


def test_responses_stream_events() -> None:
    final = {"id": "resp_2", "object": "response", "model": "gpt-4.1-2025-04-14",
             "status": "completed",
             "output": [{"type": "message", "content": [{"type": "output_text",
                                                         "text": "Hello there"}]}],
             "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 12},
                       "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": 123}}
    stream = sse(
        ("response.created", {"type": "response.created", "response": {
            **final, "status": "in_progress", "output": [], "usage": None}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hello"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": " there"}),
        ("response.output_item.added", {"type": "response.output_item.added",
                                        "item": {"id": "fc_1", "type": "function_call",
                                                 "name": "lookup"}}),
        ("response.function_call_arguments.delta", {
            "type": "response.function_call_arguments.delta", "item_id": "fc_1",
            "delta": "{\"q\": 1}"}),
        ("response.completed", {"type": "response.completed", "response": final}),
    )

    tracker = track_stream("responses", "openai", stream, chunk_size=11)

    assert tracker.result().counts() == (36, 12, 0, 87, 0)
    assert tracker.text == "Hello there"
    assert tracker.tool_calls == [("lookup", '{"q": 1}')]
    assert tracker.result().response_model == "gpt-4.1-2025-04-14"


def test_embeddings_usage_has_no_output() -> None:
    body = {"object": "list", "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 8, "total_tokens": 8}}

    usage = usage_from_body("embeddings", "openai", body)

    assert usage.counts() == (8, 0, 0, 0, 0)
    assert usage.total_tokens == 8


# --- Anthropic ---------------------------------------------------------------------------

def test_anthropic_input_total_adds_cache_buckets() -> None:
    body = {"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-3-7-sonnet-20250219",
            "content": [{"type": "text", "text": "Summary."}],
            "usage": {"input_tokens": 3, "cache_creation_input_tokens": 12304,
                      "cache_read_input_tokens": 0, "output_tokens": 550}}

    usage = usage_from_body("messages", "anthropic", body)

    assert usage.input_tokens == 12307
    assert usage.cache_write_tokens == 12304
    assert usage.cached_input_tokens == 0
    assert usage.total_tokens == 12857


def test_anthropic_stream_usage_only_on_message_delta() -> None:
    stream = sse(
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_2", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-20250514"}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hi"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"input_tokens": 4522, "cache_creation_input_tokens": 4511,
                                     "cache_read_input_tokens": 0, "output_tokens": 5}}),
        ("message_stop", {"type": "message_stop"}),
    )

    usage = track_stream("messages", "anthropic", stream).result()

    assert usage.input_tokens == 9033
    assert usage.total_tokens == 9038


def test_anthropic_documented_stream_takes_last_output() -> None:
    # The shape of Anthropic's streaming example, with a tool call and a ping.
    stream = sse(
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_3", "type": "message", "role": "assistant", "content": [],
            "model": "claude-3-5-haiku-20241022",
            "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Let me check"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"loc"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
            "type": "input_json_delta", "partial_json": "ation\": \"SF\"}"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 15}}),
        ("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 89}}),
        ("message_stop", {"type": "message_stop"}),
    )

    tracker = track_stream("messages", "anthropic", stream)
    usage = tracker.result()

    assert usage.counts() == (25, 0, 0, 89, 0)
    assert usage.response_model == "claude-3-5-haiku-20241022"
    assert tracker.text == "Let me check"
    assert tracker.tool_calls == [("get_weather", '{"location": "SF"}')]


def test_anthropic_stream_cache_read_in_message_start() -> None:
    stream = sse(
        ("message_start", {"type": "message_start", "message": {
            "model": "claude-haiku-4-5", "usage": {"input_tokens": 10,
                                                   "cache_read_input_tokens": 2000,
                                                   "cache_creation_input_tokens": 0,
                                                   "output_tokens": 1}}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 40}}),
    )

    usage = track_stream("messages", "anthropic", stream).result()

    assert usage.counts() == (2010, 2000, 0, 40, 0)


# --- Gemini ------------------------------------------------------------------------------

GEMINI_THINKING = {
    "candidates": [{"content": {"parts": [{"text": "Occam's razor says..."}], "role": "model"},
                    "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 15, "candidatesTokenCount": 359,
                      "thoughtsTokenCount": 661, "totalTokenCount": 1035,
                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 15}]},
    "modelVersion": "gemini-2.5-flash",
}


def test_gemini_thoughts_count_as_output() -> None:
    tracker = UsageTracker("generate_content", "gcp.gemini")

    tracker.feed_json(GEMINI_THINKING)
    usage = tracker.result()

    assert usage.output_tokens == 1020
    assert usage.reasoning_tokens == 661
    assert usage.input_tokens == 15
    assert usage.total_tokens == 1035
    assert tracker.text == "Occam's razor says..."


def test_gemini_cached_content_is_part_of_prompt() -> None:
    body = {"usageMetadata": {"promptTokenCount": 4200, "cachedContentTokenCount": 4000,
                              "candidatesTokenCount": 50, "totalTokenCount": 4250},
            "modelVersion": "gemini-2.5-pro"}

    usage = usage_from_body("generate_content", "gcp.gemini", body)

    assert usage.counts() == (4200, 4000, 0, 50, 0)


def test_gemini_stream_keeps_last_usage() -> None:
    def chunk(text: str, candidates: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"candidates": [{"content": {"parts": [{"text": text, **(extra or {})}],
                                            "role": "model"}}],
                "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": candidates,
                                  "thoughtsTokenCount": 30,
                                  "totalTokenCount": 38 + candidates},
                "modelVersion": "gemini-2.5-flash"}

    stream = sse((None, chunk("The ", 2)), (None, chunk("answer", 5)), (None, chunk(" is 4.", 9)))
    tracker = track_stream("generate_content", "gcp.gemini", stream, chunk_size=5)

    assert tracker.result().counts() == (8, 0, 0, 39, 30)
    assert tracker.text == "The answer is 4."


def test_gemini_function_call_and_array_stream() -> None:
    body = [{"candidates": [{"content": {"parts": [
        {"functionCall": {"name": "set_light", "args": {"on": True}}}]}}]},
        {"usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 6,
                           "toolUsePromptTokenCount": 4, "totalTokenCount": 30}}]
    tracker = UsageTracker("generate_content", "gcp.gemini")

    tracker.feed_json(body)

    assert tracker.result().counts() == (24, 0, 0, 6, 0)
    assert tracker.tool_calls == [("set_light", '{"on": true}')]


def test_gemini_openai_endpoint_adds_thinking_to_output() -> None:
    # Google's OpenAI-compatible endpoint repeats usage on each chunk and leaves thinking
    # tokens out of completion_tokens while total_tokens counts them.
    stream = sse(
        (None, {"choices": [{"delta": {"content": "1", "role": "assistant"}, "index": 0}],
                "model": "gemini-2.5-flash", "object": "chat.completion.chunk",
                "usage": {"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 103}}),
        (None, {"choices": [{"delta": {"content": ", 2", "role": "assistant"}, "index": 0}],
                "model": "gemini-2.5-flash", "object": "chat.completion.chunk",
                "usage": {"completion_tokens": 3, "prompt_tokens": 9, "total_tokens": 105}}),
    )

    usage = track_stream("chat_completions", "gcp.gemini", stream).result()

    assert usage.input_tokens == 9
    assert usage.output_tokens == 96
    assert usage.reasoning_tokens == 93
    assert usage.total_tokens == 105


def test_gemini_openai_endpoint_with_reasoning_counted() -> None:
    # If completion_tokens already includes thinking, nothing is added twice.
    body = {"model": "gemini-2.5-pro", "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 70, "total_tokens": 80,
                      "completion_tokens_details": {"reasoning_tokens": 50}}}

    usage = usage_from_body("chat_completions", "gcp.gemini", body)

    assert usage.counts() == (10, 0, 0, 70, 50)


# --- Ollama native -----------------------------------------------------------------------

def test_ollama_native_chat_stream() -> None:
    lines = [
        b'{"model":"qwen2.5-coder:7b","created_at":"2025-01-01T00:00:00Z",'
        b'"message":{"role":"assistant","content":"Hel"},"done":false}',
        b'{"model":"qwen2.5-coder:7b","message":{"role":"assistant","content":"lo"},"done":false}',
        b"",
        b'{"model":"qwen2.5-coder:7b","message":{"role":"assistant","content":""},"done":true,'
        b'"done_reason":"stop","total_duration":4883583458,"prompt_eval_count":26,'
        b'"eval_count":298}',
    ]
    tracker = UsageTracker("ollama_chat", "openai")

    for line in lines:
        tracker.feed_ndjson_line(line)
    usage = tracker.result()

    assert usage.counts() == (26, 0, 0, 298, 0)
    assert usage.response_model == "qwen2.5-coder:7b"
    assert tracker.text == "Hello"


def test_ollama_native_generate_body() -> None:
    body = {"model": "llama3.2", "response": "The sky is blue.", "done": True,
            "prompt_eval_count": 11, "eval_count": 7}
    tracker = UsageTracker("ollama_chat", "openai")

    tracker.feed_json(body)

    assert tracker.result().counts() == (11, 0, 0, 7, 0)
    assert tracker.text == "The sky is blue."


# --- genai-prices cross-check ------------------------------------------------------------

@pytest.mark.parametrize(("usage_object", "reader", "expected"), [
    (OPENAI_CACHED["usage"], openai_chat_usage, (2006, 1920, 0, 300, 0)),
    ({"input_tokens": 14746, "output_tokens": 1944,
      "output_tokens_details": {"reasoning_tokens": 1360}}, openai_responses_usage,
     (14746, 0, 0, 1944, 1360)),
    ({"input_tokens": 3, "cache_creation_input_tokens": 12304, "output_tokens": 550},
     anthropic_usage, (12307, 0, 12304, 550, 0)),
    ({"input_tokens": 4522, "cache_creation_input_tokens": 4511, "cache_read_input_tokens": 7,
      "output_tokens": 5}, anthropic_usage, (9040, 7, 4511, 5, 0)),
    (GEMINI_THINKING["usageMetadata"], gemini_usage, (15, 0, 0, 1020, 661)),
])
def test_own_reading_matches_genai_prices(usage_object: dict[str, Any], reader: Any,
                                          expected: tuple[int, ...]) -> None:
    from addons.usage import _GENAI_EXTRACTORS, _genai_usage

    fmt = {openai_chat_usage: "openai_chat", openai_responses_usage: "openai_responses",
           anthropic_usage: "anthropic", gemini_usage: "gemini"}[reader]
    genai = _genai_usage(fmt, usage_object, *_GENAI_EXTRACTORS[fmt])

    assert reader(usage_object).counts() == expected
    assert genai is not None
    assert genai.counts() == expected


def test_genai_prices_misreads_gemini_openai_endpoint() -> None:
    # The reason meterway reads this format itself: genai-prices leaves thinking out.
    from addons.usage import _genai_usage

    usage_object = {"completion_tokens": 3, "prompt_tokens": 9, "total_tokens": 105}
    genai = _genai_usage("openai_chat", usage_object, "google", "chat")

    assert genai is not None
    assert genai.output_tokens == 3
    assert openai_chat_usage(usage_object, gemini_compat=True).output_tokens == 96


# --- estimates ---------------------------------------------------------------------------

def test_request_text_formats() -> None:
    chat = {"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                     {"type": "image_url", "image_url": {"url": "data:AAAA"}}]}]}
    gemini = {"systemInstruction": {"parts": [{"text": "Be brief."}]},
              "contents": [{"role": "user", "parts": [
                  {"text": "Hi"}, {"inlineData": {"mimeType": "image/png", "data": "QUJD"}}]}]}
    anthropic = {"model": "claude-haiku-4-5", "system": "Sys", "max_tokens": 10,
                 "messages": [{"role": "user", "content": "Q"}]}

    assert request_text(chat) == "You are terse.\nDescribe"
    assert request_text(gemini) == "Be brief.\nHi"
    assert request_text(anthropic) == "Sys\nQ"
    assert request_text({"input": ["one", "two"], "model": "text-embedding-3-small"}) == "one\ntwo"
    assert request_text({"model": "llama3.2", "prompt": "Why?"}) == "Why?"


def test_estimate_counts_prompt_and_answer() -> None:
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello politely"}],
               "tools": [{"type": "function", "function": {"name": "greet"}}]}
    stream = sse((None, {"model": "gpt-4o-2024-08-06", "choices": [
        {"index": 0, "delta": {"content": "Hello, nice to meet you."}}]}))
    tracker = track_stream("chat_completions", "openai", stream)

    usage = tracker.estimate(request, "gpt-4o")

    tools_json = '[{"type": "function", "function": {"name": "greet"}}]'
    assert usage.source == "estimated"
    assert usage.input_tokens == tokens.count(tools_json + "\nSay hello politely", "gpt-4o")
    assert usage.output_tokens == tokens.count("Hello, nice to meet you.", "gpt-4o") == 7
    assert usage.cached_input_tokens is None
    assert usage.response_model == "gpt-4o-2024-08-06"


def test_usage_total_and_empty() -> None:
    assert Usage().total_tokens is None
    assert Usage().is_empty
    assert Usage(input_tokens=5).total_tokens == 5
    assert Usage(input_tokens=5, output_tokens=2).total_tokens == 7
