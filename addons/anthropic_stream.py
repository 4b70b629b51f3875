"""Convert an Anthropic Messages SSE stream into an OpenAI chat completions stream.

Anthropic names each event (`message_start`, `content_block_start`, `content_block_delta`,
`content_block_stop`, `message_delta`, `message_stop`, `ping`, `error`); OpenAI sends
unnamed `data:` chunks of type `chat.completion.chunk` and ends with `data: [DONE]`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from addons.anthropic_response import chat_usage, error_to_openai, finish_reason
from addons.sse import SSEEvent, SSEParser

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


class MessagesStreamToChat:
    """Convert one Anthropic Messages stream into OpenAI chat completion chunks, as SSE bytes.

    Feed the upstream bytes in any chunking to `feed()` and call `finish()` once at the end:
    the concatenated output is the same whatever the chunk boundaries were. `model` fills the
    chunks' `model` until `message_start` reports Anthropic's model (and when it reports none).
    With `include_usage`, a last chunk with `"choices": []` carries the usage, as OpenAI
    sends it for `stream_options.include_usage`.
    """

    def __init__(self, model: str | None = None, include_usage: bool = False) -> None:
        self._parser = SSEParser()
        self._fallback_model = model
        self._include_usage = include_usage
        self._id = ""
        self._model: str | None = None
        self._created = int(time.time())
        self._usage: dict[str, Any] = {}
        self._started = False
        self._closed = False
        # Anthropic numbers all content blocks; OpenAI numbers only the tool calls.
        self._tool_indexes: dict[int, int] = {}
        # The OpenAI finish_reason, set by the first message_delta that has a stop_reason.
        self.finish_reason: str | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The Anthropic usage merged from `message_start` and the last `message_delta`.

        `message_delta` counts are cumulative, so a later value replaces an earlier one.
        """
        return dict(self._usage) if self._usage else None

    @property
    def response_model(self) -> str | None:
        """The model that Anthropic reported in `message_start`, if any."""
        return self._model

    def feed(self, chunk: bytes) -> bytes:
        """Take bytes of the Anthropic stream and return the OpenAI chunks they complete."""
        if self._closed:
            return b""
        return self._convert(self._parser.feed(chunk))

    def finish(self) -> bytes:
        """End the stream: return the chunks still held, the usage chunk and `data: [DONE]`."""
        if self._closed:
            return b""
        out = bytearray(self._convert(self._parser.close()))
        self._closed = True
        usage = chat_usage(self._usage) if self._usage else None
        if self._include_usage and usage is not None:
            out += self._encode({**self._chunk_base(), "choices": [], "usage": usage})
        # NOTE: `[DONE]` is sent even when the upstream stream was cut before message_delta.
        # A caller that must tell the two apart checks `finish_reason is None` first.
        out += DONE
        return bytes(out)

    # -- events ----------------------------------------------------------------------------

    def _convert(self, events: list[SSEEvent]) -> bytes:
        out = bytearray()
        for event in events:
            data = event.json()
            if not isinstance(data, dict):
                continue
            kind = data.get("type") or event.event
            out += self._handle(kind, data)
        return bytes(out)

    def _handle(self, kind: Any, data: dict[str, Any]) -> bytes:
        # Fields of the wrong JSON type are read as absent: a malformed event must not end
        # the client's stream with an exception.
        index = data.get("index") if isinstance(data.get("index"), int) else None
        if kind == "message_start":
            return self._message_start(_as_dict(data.get("message")))
        if kind == "content_block_start":
            return self._block_start(index, _as_dict(data.get("content_block")))
        if kind == "content_block_delta":
            return self._block_delta(index, _as_dict(data.get("delta")))
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "error":
            logger.info("Anthropic stream sent an error event: %s", _as_dict(data.get("error")).get("type"))
            return self._encode(error_to_openai(data, 500))
        # ping, content_block_stop and message_stop carry nothing a chat client needs;
        # unknown event types are skipped because Anthropic may add new ones at any time.
        return b""

    def _message_start(self, message: dict[str, Any]) -> bytes:
        self._id = str(message.get("id") or self._id)
        if message.get("model"):
            self._model = str(message["model"])
        self._merge_usage(message.get("usage"))
        return self._start()

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._choice_chunk({"role": "assistant", "content": ""})

    def _block_start(self, index: Any, block: dict[str, Any]) -> bytes:
        out = bytearray(self._start())
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            out += self._choice_chunk({"content": block["text"]})
        elif kind == "tool_use" and isinstance(index, int):
            tool_index = len(self._tool_indexes)
            self._tool_indexes[index] = tool_index
            # A streamed tool_use block starts with an empty input that input_json_delta fills.
            arguments = json.dumps(block["input"], ensure_ascii=False) if block.get("input") else ""
            call = {
                "index": tool_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": arguments},
            }
            out += self._choice_chunk({"tool_calls": [call]})
        return bytes(out)

    def _block_delta(self, index: Any, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._start() + self._choice_chunk({"content": delta["text"]})
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_indexes:
            call = {"index": self._tool_indexes[index], "function": {"arguments": delta["partial_json"]}}
            return self._start() + self._choice_chunk({"tool_calls": [call]})
        if kind == "thinking_delta" and delta.get("thinking"):
            return self._start() + self._choice_chunk({"reasoning_content": delta["thinking"]})
        # signature_delta, citations_delta and empty deltas have no chat form.
        return b""

    def _message_delta(self, data: dict[str, Any]) -> bytes:
        self._merge_usage(data.get("usage"))
        stop_reason = _as_dict(data.get("delta")).get("stop_reason")
        if not isinstance(stop_reason, str) or self.finish_reason is not None:
            return b""
        self.finish_reason = finish_reason(stop_reason)
        return self._start() + self._choice_chunk({}, self.finish_reason)

    def _merge_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key, value in usage.items():
            if value is not None:
                self._usage[key] = value

    # -- output ----------------------------------------------------------------------------

    def _chunk_base(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model or self._fallback_model or "",
        }

    def _choice_chunk(self, delta: dict[str, Any], reason: str | None = None) -> bytes:
        chunk = {
            **self._chunk_base(),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }
        if self._include_usage:
            # OpenAI sends `"usage": null` on every chunk but the last when usage is requested.
            chunk["usage"] = None
        return self._encode(chunk)

    @staticmethod
    def _encode(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
