"""Tests for the incremental SSE parser and the usage event filter."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from addons.sse import SSEEvent, SSEParser, UsageEventFilter, usage_only_payload


def parse_in_pieces(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    previous = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(data[previous:cut])
        previous = cut
    events += parser.feed(data[previous:])
    events += parser.close()
    return events


def cut_points(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12)


def chat_chunk(content: str) -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


USAGE_EVENT = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}\n\n'
)

MIXED_STREAM = (
    b"\xef\xbb\xbf: comment line\r\n"
    b"event: greeting\r\nid: 7\r\nretry: 1500\r\ndata: h\xc3\xa9llo\r\ndata: w\xe2\x82\xacrld\r\n\r\n"
    b"data: caf\xc3\xa9 \xf0\x9f\x98\x80\n\n"
    b"data:no-space\rdata:  two spaces\r\r"
    b": keep-alive\n\n"
    b"data: [DONE]\n\n"
)


def test_parser_fields_and_line_ends() -> None:
    events = parse_in_pieces(MIXED_STREAM, [])
    data_events = [e for e in events if e.data]

    assert [e.data for e in data_events] == [
        "héllo\nw€rld", "café 😀", "no-space\n two spaces", "[DONE]"]
    assert data_events[0].event == "greeting"
    assert data_events[0].id == "7"
    assert data_events[0].retry == 1500
    assert data_events[1].event is None
    assert data_events[1].id is None


def test_parser_raw_rebuilds_stream() -> None:
    events = parse_in_pieces(MIXED_STREAM, [])

    assert b"".join(e.raw for e in events) == MIXED_STREAM
    assert events[0].raw.endswith(b"\r\n\r\n")


def test_parser_close_flushes_unterminated_event() -> None:
    parser = SSEParser()

    assert parser.feed(b"data: one\n\ndata: tw") == [SSEEvent(None, "one", None, None, b"data: one\n\n")]
    assert parser.pending_bytes == len(b"data: tw")
    assert parser.feed(b"o") == []
    flushed = parser.close()

    assert [e.data for e in flushed] == ["two"]
    assert flushed[0].raw == b"data: two"


def test_parser_waits_on_trailing_cr() -> None:
    parser = SSEParser()

    assert parser.feed(b"data: x\r\n\r") == []
    events = parser.feed(b"\ndata: y\r\n\r\n")

    assert [e.raw for e in events] == [b"data: x\r\n\r\n", b"data: y\r\n\r\n"]


def test_parser_invalid_utf8_replaced() -> None:
    events = parse_in_pieces(b"data: \xff\xfeok\n\n", [7])

    assert events[0].data == "\ufffd\ufffdok"


def test_parser_ignores_bad_retry_and_nul_id() -> None:
    events = parse_in_pieces(b"retry: 12a\nid: a\x00b\ndata: x\n\n", [])

    assert events[0].retry is None
    assert events[0].id is None


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_parser_any_split_same_events(data: st.DataObject) -> None:
    cuts = data.draw(cut_points(MIXED_STREAM))

    assert parse_in_pieces(MIXED_STREAM, cuts) == parse_in_pieces(MIXED_STREAM, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=6),
       st.sampled_from([b"\n", b"\r\n", b"\r"]), st.data())
def test_parser_random_text_any_line_end(texts: list[str], newline: bytes,
                                         data: st.DataObject) -> None:
    # Line ends inside a value would start a new line, so they are replaced first.
    clean = [t.replace("\r", " ").replace("\n", " ") for t in texts]
    stream = b"".join(b"data: " + t.encode() + newline + newline for t in clean)
    cuts = data.draw(cut_points(stream))

    events = parse_in_pieces(stream, cuts)

    # "data: " + value: the parser strips only the one space after the colon.
    assert [e.data for e in events] == clean
    assert b"".join(e.raw for e in events) == stream


def run_filter(stream: bytes, cuts: list[int]) -> tuple[bytes, UsageEventFilter]:
    usage_filter = UsageEventFilter()
    out = bytearray()
    previous = 0
    for cut in sorted(set(cuts)):
        out += usage_filter.filter(stream[previous:cut])
        previous = cut
    out += usage_filter.filter(stream[previous:])
    out += usage_filter.finish()
    return bytes(out), usage_filter


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=15).map(lambda t: t.replace("\r", "").replace("\n", "")),
                min_size=0, max_size=5),
       st.integers(min_value=0, max_value=5), st.data())
def test_filter_drops_only_usage_event(contents: list[str], position: int,
                                       data: st.DataObject) -> None:
    before = b"".join(chat_chunk(c) for c in contents[:position])
    after = b"".join(chat_chunk(c) for c in contents[position:]) + b"data: [DONE]\n\n"
    stream = before + USAGE_EVENT + after
    cuts = data.draw(cut_points(stream))

    out, usage_filter = run_filter(stream, cuts)

    assert out == before + after
    assert usage_filter.removed_usage == {"prompt_tokens": 12, "completion_tokens": 7,
                                          "total_tokens": 19}
    assert [e.raw for e in usage_filter.removed_events] == [USAGE_EVENT]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_filter_without_usage_is_identity(data: st.DataObject) -> None:
    stream = MIXED_STREAM + chat_chunk("déjà vu") + b"data: {\"choices\": [], \"x\": 1}\n\n"
    cuts = data.draw(cut_points(stream))

    out, usage_filter = run_filter(stream, cuts)

    assert out == stream
    assert usage_filter.removed_usage is None


def test_filter_keeps_usage_on_content_chunk() -> None:
    # A chunk with choices and usage (as Gemini's OpenAI endpoint sends) is content, not extra.
    chunk = (b'data: {"choices":[{"index":0,"delta":{"content":"1"}}],'
             b'"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":103}}\n\n')

    out, usage_filter = run_filter(chunk, [10])

    assert out == chunk
    assert usage_filter.removed_events == []


def test_filter_holds_incomplete_event() -> None:
    usage_filter = UsageEventFilter()

    assert usage_filter.filter(b"data: {\"choices\": []") == b""
    assert usage_filter.filter(b", \"usage\": {\"total_tokens\": 3}}\n\ndata: [DO") == b""
    assert usage_filter.finish() == b"data: [DO"


def test_usage_only_payload_needs_empty_choices() -> None:
    assert usage_only_payload(SSEEvent(None, '{"usage": {"a": 1}}', None, None, b"")) is None
    assert usage_only_payload(SSEEvent(None, "[DONE]", None, None, b"")) is None
    assert usage_only_payload(SSEEvent(None, '{"choices": [], "usage": {"a": 1}}', None, None,
                                       b"")) == {"a": 1}
