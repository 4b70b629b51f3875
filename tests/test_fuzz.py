"""Property tests with generated input for the parsers the gateway runs on untrusted bytes.

Each property runs a bounded number of examples with a per-example deadline, so the file
stays within a few seconds. A failure prints the smallest input hypothesis found.
"""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http

from addons.anthropic_translate import MessagesStreamToChat
from addons.config_load import ConfigError, load_config
from addons.requestbody import BadRequest, parse_json_body
from addons.sse import SSEParser, UsageEventFilter
from addons.streamtap import StreamTap
from addons.usage import UsageTracker

FAST = settings(max_examples=50, deadline=timedelta(milliseconds=500),
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=timedelta(milliseconds=1500),
                suppress_health_check=[HealthCheck.too_slow])


def _warm_up() -> None:
    """Load genai-prices' data once, so the first example does not pay for it within its deadline."""
    tracker = UsageTracker("chat_completions", "openai")
    tracker.feed_json({"model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    tracker.result()


_warm_up()

APIS = ["chat_completions", "responses", "messages", "embeddings", "generate_content", "ollama_chat", "other"]
PROVIDERS = ["openai", "anthropic", "gcp.gemini", "ollama", None]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=10,
)
# Usage-like objects with odd values: the field names providers use, any JSON as values.
usage_keys = st.sampled_from([
    "prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens", "promptTokenCount",
    "candidatesTokenCount", "thoughtsTokenCount", "totalTokenCount", "cachedContentTokenCount",
    "prompt_tokens_details", "completion_tokens_details", "input_tokens_details", "cached_tokens",
    "reasoning_tokens", "prompt_eval_count", "eval_count",
])
usage_objects = st.dictionaries(usage_keys, json_values, max_size=6)
replies = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values, "modelVersion": json_values, "usage": usage_objects | json_values,
        "usageMetadata": usage_objects | json_values, "type": st.sampled_from(
            ["message", "message_start", "message_delta", "response.completed", "content_block_delta"]),
        "message": st.fixed_dictionaries({}, optional={"usage": usage_objects, "model": json_values,
                                                       "content": json_values}),
        "response": st.fixed_dictionaries({}, optional={"usage": usage_objects, "model": json_values}),
        "choices": json_values, "candidates": json_values, "delta": json_values,
        "prompt_eval_count": json_values, "eval_count": json_values, "done": st.booleans(),
    },
)


def split_points(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=0, max_value=len(data)), max_size=8).map(sorted)


def chunks_of(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *points, len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:])]


def sse_stream(events: list[tuple[str | None, str]]) -> bytes:
    out = b""
    for name, data in events:
        if name is not None:
            out += f"event: {name}\n".encode()
        for line in data.split("\n"):
            out += f"data: {line}\n".encode()
        out += b"\n"
    return out


sse_bytes = st.binary(max_size=400) | st.lists(
    st.tuples(st.none() | st.sampled_from(["message_start", "message_delta", "ping", "error"]),
              st.text(max_size=40) | replies.map(json.dumps)), max_size=6).map(sse_stream)


@FAST
@given(st.data())
def test_sse_parser_chunking_invariant(data: st.DataObject) -> None:
    stream = data.draw(sse_bytes)
    points = data.draw(split_points(stream))
    whole = SSEParser()
    expected = whole.feed(stream) + whole.close()
    parser = SSEParser()
    got = []
    for chunk in chunks_of(stream, points):
        got += parser.feed(chunk)
    got += parser.close()
    assert got == expected
    assert b"".join(event.raw for event in got) == stream.removeprefix(b"\xef\xbb\xbf") or \
        b"".join(event.raw for event in got) == stream


@FAST
@given(st.data())
def test_usage_filter_keeps_other_bytes(data: st.DataObject) -> None:
    texts = data.draw(st.lists(st.text(max_size=10), max_size=4))
    with_usage = data.draw(st.booleans())
    events = [(None, json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]}))
              for t in texts]
    kept = sse_stream(events)
    if with_usage:
        events.append((None, json.dumps({"object": "chat.completion.chunk", "choices": [],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})))
    events.append((None, "[DONE]"))
    kept += sse_stream([(None, "[DONE]")])
    stream = sse_stream(events)
    points = data.draw(split_points(stream))
    usage_filter = UsageEventFilter()
    out = b"".join(usage_filter.filter(chunk) for chunk in chunks_of(stream, points)) + usage_filter.finish()
    assert out == kept
    assert (usage_filter.removed_usage is not None) == with_usage


@FAST
@given(st.data())
def test_stream_tap_strips_usage_and_reads_it(data: st.DataObject) -> None:
    texts = data.draw(st.lists(st.text(max_size=10), max_size=4))
    events = [(None, json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]}))
              for t in texts]
    expected = sse_stream(events + [(None, "[DONE]")])
    events.append((None, json.dumps({"object": "chat.completion.chunk", "choices": [],
                                     "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})))
    events.append((None, "[DONE]"))
    stream = sse_stream(events)
    points = data.draw(split_points(stream))
    tracker = UsageTracker("chat_completions", "openai")
    tap = StreamTap(tracker, kind="sse", strip_usage=True, max_bytes=1 << 20)
    # mitmproxy passes b"" only at the end of a stream, so the cut chunks leave out empty ones.
    chunks = [chunk for chunk in chunks_of(stream, points) if chunk]
    out = b"".join(b"".join(tap(chunk)) for chunk in chunks) + b"".join(tap(b""))
    # One parse of the stream serves both the client's bytes and the usage.
    assert out == expected
    assert bytes(tap.kept) == expected
    assert tracker.result().input_tokens == 3
    assert tracker.result().output_tokens == 2
    assert tracker.text == "".join(texts)


@FAST
@given(sse_bytes, split_points(b"x" * 400))
def test_usage_filter_any_bytes(stream: bytes, points: list[int]) -> None:
    usage_filter = UsageEventFilter()
    out = b"".join(usage_filter.filter(chunk) for chunk in chunks_of(stream, [p for p in points if p <= len(stream)]))
    out += usage_filter.finish()
    removed = b"".join(event.raw for event in usage_filter.removed_events)
    assert len(out) + len(removed) == len(stream)


def check_usage(tracker: UsageTracker) -> None:
    usage = tracker.result()
    for field in ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                  "reasoning_tokens", "total_tokens"):
        value = getattr(usage, field)
        assert value is None or isinstance(value, int), (field, value)
    assert usage.source in ("provider", "none")
    assert usage.response_model is None or isinstance(usage.response_model, str)


@FAST
@given(st.sampled_from(APIS), st.sampled_from(PROVIDERS), replies | json_values)
def test_usage_tracker_any_json(api: str, provider: str | None, body: object) -> None:
    tracker = UsageTracker(api, provider)
    tracker.feed_json(body)
    check_usage(tracker)


@FAST
@given(st.sampled_from(APIS), st.sampled_from(PROVIDERS), sse_bytes)
def test_usage_tracker_any_stream(api: str, provider: str | None, stream: bytes) -> None:
    tracker = UsageTracker(api, provider)
    parser = SSEParser()
    for event in parser.feed(stream) + parser.close():
        tracker.feed_event(event)
    for line in stream.split(b"\n"):
        tracker.feed_ndjson_line(line)
    check_usage(tracker)


def anthropic_stream(texts: list[str], usage: dict) -> bytes:
    events = [("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 4, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": text}}) for text in texts]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}),
               ("message_stop", {"type": "message_stop"})]
    return sse_stream([(name, json.dumps(payload)) for name, payload in events])


def convert(stream: bytes, points: list[int], include_usage: bool) -> bytes:
    converter = MessagesStreamToChat("fallback", include_usage)
    out = b"".join(converter.feed(chunk) for chunk in chunks_of(stream, points))
    return out + converter.finish()


def normalised(out: bytes) -> list[object]:
    """Parse converter output, dropping the `created` time, which differs per converter."""
    events = []
    for event in SSEParser().feed(out):
        payload = event.json()
        if isinstance(payload, dict):
            payload.pop("created", None)
        events.append(payload if payload is not None else event.data)
    return events


@FAST
@given(st.data())
def test_anthropic_stream_chunking_invariant(data: st.DataObject) -> None:
    texts = data.draw(st.lists(st.text(max_size=12), max_size=4))
    usage = data.draw(usage_objects)
    include_usage = data.draw(st.booleans())
    stream = anthropic_stream(texts, usage)
    points = data.draw(split_points(stream))
    out = convert(stream, points, include_usage)
    assert normalised(out) == normalised(convert(stream, [], include_usage))
    assert out.endswith(b"data: [DONE]\n\n")
    content = "".join(
        choice.get("delta", {}).get("content") or ""
        for payload in normalised(out) if isinstance(payload, dict)
        for choice in payload.get("choices", [])
    )
    assert content == "".join(texts)


@FAST
@given(sse_bytes, st.booleans())
def test_anthropic_stream_any_bytes(stream: bytes, include_usage: bool) -> None:
    out = convert(stream, [len(stream) // 2], include_usage)
    for payload in normalised(out):
        assert isinstance(payload, dict) or payload == "[DONE]"


@FAST
@given(st.binary(max_size=300) | json_values.map(lambda value: json.dumps(value).encode())
       | replies.map(lambda value: json.dumps(value).encode()))
def test_parse_json_body_any_bytes(body: bytes) -> None:
    request = http.Request.make("POST", "http://127.0.0.1/v1/chat/completions", body,
                                {"content-type": "application/json"})
    try:
        parsed = parse_json_body(request)
    except BadRequest as err:
        assert err.status == 400
        assert str(err)
        return
    assert parsed is None or isinstance(parsed, dict)
    if parsed is not None:
        assert parsed.get("model") is None or isinstance(parsed["model"], str)


VALID_CONFIG = {
    "binds": [{"port": 3000, "listeners": [{"routes": [{"name": "r", "backends": [
        {"ai": {"name": "b", "provider": {"openAI": {}}, "hostOverride": "127.0.0.1:11434"}}]}]}]}],
    "config": {"database": {"url": "sqlite://log.db"}},
}


def mutate(config: object, path: list[str | int], value: object) -> object:
    """Replace the value at `path` (as far as it exists) with `value`."""
    if not path or not isinstance(config, (dict, list)):
        return value
    key = path[0]
    if isinstance(config, dict):
        copy = dict(config)
        name = str(key)
        copy[name] = mutate(copy.get(name), path[1:], value)
        return copy
    copy_list = list(config)
    if not copy_list:
        return [value]
    index = int(key) % len(copy_list) if isinstance(key, int) else 0
    copy_list[index] = mutate(copy_list[index], path[1:], value)
    return copy_list


config_keys = st.sampled_from(["binds", "port", "listeners", "routes", "backends", "ai", "provider", "openAI",
                               "hostOverride", "config", "database", "url", "policies", "matches", "path",
                               "meterway", "llm", "frontendPolicies", "http", "maxBufferSize", "name"])
config_texts = (
    st.text(max_size=200)
    | st.builds(lambda path, value: yaml.safe_dump(mutate(VALID_CONFIG, path, value)),
                st.lists(config_keys | st.integers(0, 3), max_size=6), json_values)
    | json_values.map(yaml.safe_dump)
)


@SLOW
@given(config_texts)
def test_load_config_raises_only_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gateway.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            gateway = load_config(path, environ={})
        except ConfigError as err:
            assert err.problems
            assert all(isinstance(problem, str) and problem for problem in err.problems)
            return
        assert gateway.source is not None
