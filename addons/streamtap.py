"""Watching a streamed response as it passes to the client.

mitmproxy calls a flow's `response.stream` callable with each chunk and once with `b""` at
the end; whatever it returns goes to the client. The tap parses SSE or NDJSON for usage,
keeps a capped copy for the log, notes the first byte's time, and removes the usage event
that the gateway itself asked for. Every other byte goes to the client unchanged.

The tap returns a list of chunks, never an empty bytes object: for a chunked response
mitmproxy would encode `b""` as the terminating zero-length chunk and end the stream early.
"""

from __future__ import annotations

import time
from typing import Any

from addons.sse import SSEEvent, SSEParser, UsageEventFilter


class StreamTap:
    def __init__(self, tracker: Any | None, *, kind: str, strip_usage: bool, max_bytes: int,
                 transform: Any | None = None) -> None:
        self.tracker = tracker
        # Rewrites the stream for the client (feed(bytes) -> bytes, finish() -> bytes), as
        # when an Anthropic stream goes back to an OpenAI client; usage is read before it.
        self.transform = transform
        # Callables given each upstream chunk and whether it is the last, such as the
        # semantic router's observe-only response body stream.
        self.observers: list[Any] = []
        self.kind = kind  # "sse", "ndjson" or "raw"
        self.parser = SSEParser() if kind == "sse" else None
        self.filter = UsageEventFilter() if strip_usage and kind == "sse" else None
        self.max_bytes = max_bytes
        self.kept = bytearray()
        self.total_bytes = 0
        self.first_byte_at: float | None = None
        self.ended = False
        self._line_buffer = b""

    def _keep(self, data: bytes) -> None:
        room = self.max_bytes - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    @property
    def truncated(self) -> bool:
        return self.total_bytes > len(self.kept)

    def __call__(self, chunk: bytes) -> list[bytes]:
        if chunk == b"":
            rest = self._end()
            return [rest] if rest else []
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        self.total_bytes += len(chunk)
        events = self._account(chunk)
        for observe in self.observers:
            observe(chunk, False)
        if self.transform is not None:
            out = self.transform.feed(chunk)
        elif self.filter is not None:
            # The events parsed for usage are the ones filtered: one parse per chunk.
            out = self.filter.pass_events(events)
        else:
            out = chunk
        self._keep(out)
        return [out] if out else []

    def _parses_events(self) -> bool:
        return self.parser is not None and (self.tracker is not None or self.filter is not None)

    def _account(self, chunk: bytes) -> list[SSEEvent]:
        """Read usage from the chunk's complete events; return those events (SSE only, else [])."""
        if self._parses_events():
            events = self.parser.feed(chunk)
            if self.tracker is not None:
                for event in events:
                    self.tracker.feed_event(event)
            return events
        if self.tracker is not None and self.kind == "ndjson":
            lines = (self._line_buffer + chunk).split(b"\n")
            self._line_buffer = lines.pop()
            for line in lines:
                if line.strip():
                    self.tracker.feed_ndjson_line(line)
        return []

    def _end(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        for observe in self.observers:
            observe(b"", True)
        events = self.parser.close() if self._parses_events() else []
        if self.tracker is not None:
            for event in events:
                self.tracker.feed_event(event)
            if self.kind == "ndjson" and self._line_buffer.strip():
                self.tracker.feed_ndjson_line(self._line_buffer)
        if self.transform is not None:
            rest = self.transform.finish()
        elif self.filter is not None:
            rest = self.filter.pass_events(events)
        else:
            rest = b""
        self._keep(rest)
        return rest
