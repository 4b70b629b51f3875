"""A misbehaving upstream for fault tests: a raw asyncio server on 127.0.0.1.

Each request picks its behaviour with the `x-fault` request header (default `ok`):

- `ok`: a complete OpenAI chat completion with usage.
- `stream`: a complete SSE chat stream with a usage event.
- `reset-body`: headers and part of a JSON body, then a TCP reset.
- `reset-stream`: headers and two SSE events, then a TCP reset.
- `stall`: reads the request and never responds.
- `trickle`: an SSE stream of `TRICKLE_EVENTS` events, one every `TRICKLE_GAP` seconds.
- `invalid`: bytes that are not an HTTP response.
- `truncated`: a `content-length` larger than the body sent, then a clean close.
- `429`: a rate-limit error with `retry-after: 7`.
- `500`, `503`: OpenAI-style error bodies with the message `PROVIDER_MESSAGE`.

Anything that does not parse as an HTTP request (a TLS ClientHello sent to the plain
server, for example) gets `400 Bad Request` in plain text, as an ordinary HTTP server answers.
With `ssl_context` set, the server speaks TLS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import threading

TRICKLE_EVENTS = 6
TRICKLE_GAP = 0.3
PROVIDER_MESSAGE = "The engine is currently overloaded, please try again later"


def _completion(model: str) -> dict:
    return {
        "id": "chatcmpl-faulty", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def _chunk(model: str, text: str | None, usage: bool = False) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    payload: dict = {"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "created": 0,
                     "model": model, "choices": choices}
    if usage:
        payload["usage"] = {"prompt_tokens": 5, "completion_tokens": TRICKLE_EVENTS, "total_tokens": 11}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_answer(status: str, payload: dict, **extra: str) -> bytes:
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close", **extra}
    return _head(status, headers) + body


SSE_HEADERS = {"content-type": "text/event-stream", "transfer-encoding": "chunked", "connection": "close"}


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class FaultyUpstream:
    """The misbehaving server on its own event loop thread; use as a context manager."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.port = 0
        self.requests: list[tuple[str, str]] = []  # (fault, request line) per parsed request
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faulty-upstream", daemon=True)
        self._server: asyncio.Server | None = None
        self._stalled: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> FaultyUpstream:
        """Start serving on a free port."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the server and every stalled connection, then end the thread."""
        async def close() -> None:
            for writer in self._stalled:
                writer.close()
            if self._server is not None:
                self._server.close()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultyUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            first = await reader.readexactly(1)
            if first == b"\x16":
                # A TLS handshake record sent to this plain server: respond at once instead
                # of waiting for a request line that never comes, so the TLS failure is quick.
                await self._bad_request(writer)
                return
            head = first + await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
            await self._bad_request(writer)
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._bad_request(writer)
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        length = headers.get("content-length", "0")
        if length.isdigit() and int(length):
            body = await reader.readexactly(int(length))
        fault = headers.get("x-fault", "ok")
        self.requests.append((fault, lines[0]))
        try:
            model = json.loads(body).get("model") or "unknown"
        except (ValueError, AttributeError):
            model = "unknown"
        try:
            await self._answer(fault, model, writer)
        except (ConnectionError, ssl.SSLError):
            pass  # the gateway went away first; nothing left to send

    async def _bad_request(self, writer: asyncio.StreamWriter) -> None:
        body = b"Bad Request: this server speaks plain HTTP/1.1\n"
        try:
            writer.write(_head("400 Bad Request", {"content-type": "text/plain", "content-length": str(len(body)),
                                                   "connection": "close"}) + body)
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        writer.close()

    async def _answer(self, fault: str, model: str, writer: asyncio.StreamWriter) -> None:
        if fault == "ok":
            writer.write(_json_answer("200 OK", _completion(model)))
        elif fault == "stream":
            writer.write(_head("200 OK", SSE_HEADERS))
            for text in ("a", "b"):
                writer.write(_chunked(_chunk(model, text)))
            writer.write(_chunked(_chunk(model, None, usage=True)) + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        elif fault == "reset-body":
            body = json.dumps(_completion(model)).encode()
            writer.write(_head("200 OK", {"content-type": "application/json", "content-length": str(len(body))}))
            writer.write(body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(0.05)
            self._reset(writer)
            return
        elif fault == "reset-stream":
            writer.write(_head("200 OK", SSE_HEADERS))
            writer.write(_chunked(_chunk(model, "a")) + _chunked(_chunk(model, "b")))
            await writer.drain()
            await asyncio.sleep(0.05)
            self._reset(writer)
            return
        elif fault == "stall":
            self._stalled.append(writer)
            return
        elif fault == "trickle":
            writer.write(_head("200 OK", SSE_HEADERS))
            for index in range(TRICKLE_EVENTS):
                writer.write(_chunked(_chunk(model, f"t{index} ")))
                await writer.drain()
                await asyncio.sleep(TRICKLE_GAP)
            writer.write(_chunked(_chunk(model, None, usage=True)) + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        elif fault == "invalid":
            writer.write(b"SPDY/9 what is this\r\n\x00\x01garbage\r\n\r\n")
        elif fault == "truncated":
            body = json.dumps(_completion(model)).encode()
            writer.write(_head("200 OK", {"content-type": "application/json",
                                          "content-length": str(len(body) + 500), "connection": "close"}))
            writer.write(body)
        elif fault == "429":
            writer.write(_json_answer("429 Too Many Requests", {"error": {
                "message": "Rate limit reached for requests", "type": "requests", "param": None,
                "code": "rate_limit_exceeded"}}, **{"retry-after": "7"}))
        elif fault in ("500", "503"):
            status = "500 Internal Server Error" if fault == "500" else "503 Service Unavailable"
            writer.write(_json_answer(status, {"error": {"message": PROVIDER_MESSAGE, "type": "server_error",
                                                         "param": None, "code": None}}))
        else:
            writer.write(_json_answer("400 Bad Request", {"error": {"message": f"unknown x-fault {fault!r}"}}))
        await writer.drain()
        writer.close()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        """Abort the connection with a TCP RST instead of a clean FIN."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
