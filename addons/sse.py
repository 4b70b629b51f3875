"""Parse Server-Sent Events incrementally and drop the usage event the gateway asked for.

The parser follows the WHATWG event-stream rules (CR, LF and CRLF line ends, `:` comments,
multi-line `data:`), but it also keeps the exact bytes of each event. Every input byte ends up in
exactly one event's `raw`, comment-only blocks and stray blank lines included, so a consumer can
rebuild the stream byte for byte from the events it lets through.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

_CR = 0x0D
_LF = 0x0A
_BOM = "\ufeff"
_NOT_PARSED = object()


@dataclass(frozen=True)
class SSEEvent:
    """One event block of an SSE stream.

    `data` joins the `data:` lines with "\\n"; `event`, `id` and `retry` are the values set in
    this block (None when the block sets none). `raw` is the block's exact bytes, including the
    blank line that ends it.
    """

    event: str | None
    data: str
    id: str | None
    retry: int | None
    raw: bytes

    def json(self) -> Any | None:
        """Parse `data` as JSON; return None when it is empty or not JSON (such as `[DONE]`).

        The result is parsed once and shared by every caller (usage reading and the usage
        filter both look at each event), so callers must not change it.
        """
        cached = self.__dict__.get("_parsed", _NOT_PARSED)
        if cached is not _NOT_PARSED:
            return cached
        parsed = None
        if self.data and self.data != "[DONE]":
            try:
                parsed = json.loads(self.data)
            except ValueError:
                parsed = None
        # The dataclass is frozen; the cache is not one of its fields, so it is set directly.
        self.__dict__["_parsed"] = parsed
        return parsed


class SSEParser:
    """Split a byte stream into `SSEEvent`s, whatever the chunk boundaries are.

    Lines are cut on bytes: CR and LF never occur inside a multi-byte UTF-8 sequence, so a
    complete line always contains complete characters and is decoded only once it is complete.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()  # bytes of the line being read, not yet complete
        self._event_raw = bytearray()  # bytes of the complete lines of the current block
        self._data_lines: list[str] = []
        self._event_type: str | None = None
        self._event_id: str | None = None
        self._retry: int | None = None
        self._first_line = True

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes to the stream and return the events that they complete."""
        self._buffer += chunk
        return self._drain(final=False)

    def close(self) -> list[SSEEvent]:
        """End the stream and return what is left, including a final unterminated event."""
        events = self._drain(final=True)
        if self._buffer:
            # The last line has no line end: take it as a line so its field counts.
            line = bytes(self._buffer)
            self._buffer.clear()
            self._event_raw += line
            self._process_line(line)
        if self._event_raw:
            events.append(self._dispatch())
        return events

    @property
    def pending_bytes(self) -> int:
        """Number of fed bytes not yet returned in an event."""
        return len(self._buffer) + len(self._event_raw)

    def _drain(self, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buffer = self._buffer
        length = len(buffer)
        start = 0
        # Positions of the next CR and LF, searched again only once passed, so a chunk with
        # many lines is scanned in linear time.
        next_cr = buffer.find(b"\r")
        next_lf = buffer.find(b"\n")
        while start < length:
            if 0 <= next_cr < start:
                next_cr = buffer.find(b"\r", start)
            if 0 <= next_lf < start:
                next_lf = buffer.find(b"\n", start)
            if next_cr < 0 and next_lf < 0:
                break
            if next_cr < 0:
                end = next_lf
            elif next_lf < 0:
                end = next_cr
            else:
                end = min(next_cr, next_lf)
            if buffer[end] == _CR:
                if end + 1 < length:
                    terminator_end = end + 2 if buffer[end + 1] == _LF else end + 1
                elif final:
                    terminator_end = end + 1
                else:
                    # A CR at the end of the chunk may be the first half of CRLF: wait for
                    # the next byte so the LF stays in the same event's raw bytes.
                    break
            else:
                terminator_end = end + 1
            line = bytes(buffer[start:end])
            self._event_raw += buffer[start:terminator_end]
            start = terminator_end
            if line:
                self._process_line(line)
            else:
                events.append(self._dispatch())
        del buffer[:start]
        return events

    def _process_line(self, line_bytes: bytes) -> None:
        line = line_bytes.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BOM)
        if line.startswith(":"):
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_lines.append(value)
        elif field == "event":
            self._event_type = value
        elif field == "id":
            if "\x00" not in value:
                self._event_id = value
        elif field == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        # Other field names are ignored, as the SSE specification requires.

    def _dispatch(self) -> SSEEvent:
        event = SSEEvent(
            event=self._event_type,
            data="\n".join(self._data_lines),
            id=self._event_id,
            retry=self._retry,
            raw=bytes(self._event_raw),
        )
        self._event_raw.clear()
        self._data_lines = []
        self._event_type = None
        self._event_id = None
        self._retry = None
        return event


def usage_only_payload(event: SSEEvent) -> dict[str, Any] | None:
    """Return the `usage` object of a chat completions chunk with `"choices": []`, else None."""
    obj = event.json()
    if not isinstance(obj, dict):
        return None
    if obj.get("choices") != [] or not isinstance(obj.get("usage"), dict):
        return None
    return obj["usage"]


class UsageEventFilter:
    """Remove the usage-only chunk from an OpenAI-style chat completions stream.

    Use it when the gateway itself turned on `stream_options.include_usage` and the client did
    not ask for usage. The output is the input bytes minus the usage-only events. Bytes of an
    event that is not complete yet are held back until it completes or `finish()` is called.
    """

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._removed: list[SSEEvent] = []

    def filter(self, chunk: bytes) -> bytes:
        """Return the bytes of `chunk` (and held bytes) that the client should receive now."""
        return self.pass_events(self._parser.feed(chunk))

    def finish(self) -> bytes:
        """Return the held bytes at the end of the stream."""
        return self.pass_events(self._parser.close())

    @property
    def removed_events(self) -> list[SSEEvent]:
        """Usage-only events taken out of the stream, in order."""
        return list(self._removed)

    @property
    def removed_usage(self) -> dict[str, Any] | None:
        """The `usage` object of the last removed event, for usage accounting."""
        if not self._removed:
            return None
        return usage_only_payload(self._removed[-1])

    def pass_events(self, events: list[SSEEvent]) -> bytes:
        """Return the bytes of `events` minus the usage-only ones, for a caller that parses the stream itself."""
        out = bytearray()
        for event in events:
            if usage_only_payload(event) is not None:
                self._removed.append(event)
                logger.debug("removed the usage-only event (%d bytes)", len(event.raw))
            else:
                out += event.raw
        return bytes(out)
