"""The request pipeline every provider stand-in shares: recording, auth, errors, answers."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from tests.standins.recorder import (
    ReceivedRequest,
    collect_text,
    count_words,
    read_request,
    split_pieces,
)
from tests.standins.server import ServerLifecycle
from tests.standins.tls import TestCA, shared_ca

logger = logging.getLogger(__name__)

ErrorSpec = tuple[int, Any, dict[str, str] | None]
RECEIVED = web.RequestKey("received", ReceivedRequest)
STREAM = web.RequestKey("stream_response", web.StreamResponse)


class ClientGone(Exception):
    """The client closed the connection while a stream was being written."""


@dataclass
class AnswerPlan:
    """The deterministic answer to one generation request, fixed before it is sent."""

    model: str
    response_model: str
    text: str
    pieces: list[str]
    prompt_words: int
    completion_words: int
    usage_patch: dict[str, Any] | None


class StandIn(ServerLifecycle):
    """A local HTTP server that speaks one provider's wire format.

    Use it as `async with OpenAIStandIn() as s:` inside an event loop, or as
    `with OpenAIStandIn() as s:` (or `start_in_thread()`), which serves from a background
    thread so synchronous SDK clients can call it. Per-test knobs, read on each request:

    - `next_usage`: dict merged into the next response's usage object (provider format),
      then cleared; `usage_patch` is the same but kept for every response.
    - `next_error`: `(status, body, headers)` answered to the next request, then cleared;
      `body=None` gives the provider's own error body. `always_error` is never cleared.
    - `next_chunks`: the text pieces of the next answer, one stream event each.
    - `next_answer`: the full text of the next answer.
    - `chunks`: the number of stream events to split each answer into (pads the answer
      with filler words when needed); `delay_per_chunk`: seconds to sleep between events.
    - `require_key`: the only credential accepted; `auth_required=False` accepts none.
    - `gzip`: gzip JSON responses when the client accepts it, as the real APIs do.
    - `response_models`: map of requested model to the model the response reports.
    - `known_models`: when set, other models get the provider's "model not found" error.
    """

    provider: ClassVar[str] = "base"
    requires_auth: ClassVar[bool] = True

    def __init__(
        self,
        *,
        tls: bool = False,
        ca: TestCA | None = None,
        host_names: tuple[str, ...] | list[str] = (),
        require_key: str | None = None,
        gzip: bool = False,
    ) -> None:
        self.tls = tls
        self.ca = ca or (shared_ca() if tls else None)
        self.host_names = tuple(host_names)
        self._initial_key = require_key
        self._initial_gzip = gzip
        self.received: list[ReceivedRequest] = []
        # The body bytes of each answer the handlers returned (not error or auth replies).
        self.sent: list[bytes] = []
        self._stream_bytes: dict[int, bytearray] = {}
        self.disconnects = 0
        self._set_knobs()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _set_knobs(self) -> None:
        self.require_key: str | None = self._initial_key
        self.auth_required = self.requires_auth
        self.gzip = self._initial_gzip
        self.next_usage: dict[str, Any] | None = None
        self.usage_patch: dict[str, Any] | None = None
        self.next_error: ErrorSpec | None = None
        self.always_error: ErrorSpec | None = None
        self.next_chunks: list[str] | None = None
        self.next_answer: str | None = None
        self.chunks: int | None = None
        self.delay_per_chunk = 0.0
        self.response_models: dict[str, str] = {}
        self.known_models: list[str] | None = None

    def reset(self) -> None:
        """Forget received requests and restore every knob to its initial value.

        Session-scoped fixtures call this before each test, so no setting leaks between tests.
        """
        self.received.clear()
        self.sent.clear()
        self.disconnects = 0
        self._set_knobs()

    def requests_to(self, path_part: str) -> list[ReceivedRequest]:
        """Return the received requests whose path contains `path_part`, in order."""
        return [r for r in self.received if path_part in r.path]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Block until at least `count` requests were received, then return them all."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.provider} stand-in received {len(self.received)} requests, "
                    f"expected {count} within {timeout} s"
                )
            time.sleep(0.01)
        return list(self.received)

    # -- request pipeline --------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        received = await read_request(request)
        self.received.append(received)
        request[RECEIVED] = received

        denied = self.check_auth(request, received)
        if denied is not None:
            return denied

        error = self.next_error or self.always_error
        self.next_error = None
        if error is not None:
            return self.error_response(request, *error)

        try:
            response = await handler(request)
            self._record_sent(response)
            return response
        except ClientGone:
            # The stream was already started: hand back that response so aiohttp just
            # closes the connection instead of logging an unhandled error.
            self.disconnects += 1
            logger.info("%s stand-in: client left during %s", self.provider, request.path)
            return request[STREAM]

    def _record_sent(self, response: web.StreamResponse) -> None:
        """Keep the body bytes of each answer, in arrival order of the requests."""
        if isinstance(response, web.Response):
            body = response.body
            self.sent.append(bytes(body) if isinstance(body, (bytes, bytearray)) else b"")
        else:
            self.sent.append(bytes(self._stream_bytes.pop(id(response), b"")))

    async def _unknown_path(self, request: web.Request) -> web.Response:
        message = f"{self.provider} stand-in serves no {request.method} {request.path}"
        return self.error_response(request, 404, self.error_body_for(request, 404, message))

    def check_auth(self, request: web.Request, received: ReceivedRequest) -> web.Response | None:
        """Return the provider's auth error for a request without valid credentials, else None."""
        return None

    def error_body(self, status: int, message: str) -> Any:
        """Return the provider's JSON error body for `status`; subclasses override this."""
        return {"error": {"message": message, "code": status}}

    def error_body_for(self, request: web.Request, status: int, message: str) -> Any:
        """Return the error body for `request`; stand-ins serving two formats pick by path."""
        return self.error_body(status, message)

    def error_response(
        self,
        request: web.Request,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """Build an error response; `body=None` uses the provider's default error body."""
        all_headers = dict(self.response_headers())
        if headers is None and status == 429:
            all_headers["retry-after"] = "1"
        all_headers.update(headers or {})
        if body is None:
            body = self.error_body_for(request, status, _default_message(status))
        if isinstance(body, (dict, list)):
            return self.json_response(request, body, status=status, headers=all_headers)
        raw = body.encode() if isinstance(body, str) else bytes(body)
        all_headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        return web.Response(status=status, body=raw, headers=all_headers)

    def response_headers(self) -> dict[str, str]:
        """Return headers sent with every response (request ids and the like)."""
        return {}

    def json_response(
        self,
        request: web.Request,
        data: Any,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """Send `data` as JSON, gzip-compressed when `self.gzip` and the client accepts it."""
        body = json.dumps(data).encode()
        all_headers = {**self.response_headers(), **(headers or {})}
        all_headers["Content-Type"] = "application/json"
        if self.gzip and "gzip" in request.headers.get("Accept-Encoding", "").lower():
            body = gzip.compress(body)
            all_headers["Content-Encoding"] = "gzip"
            all_headers["Vary"] = "Accept-Encoding"
        return web.Response(status=status, body=body, headers=all_headers)

    # -- answers and streams -------------------------------------------------------------

    def plan_answer(self, model: str, prompt: Any) -> AnswerPlan:
        """Fix the answer to one request and consume the one-shot overrides.

        `prompt` is the part of the request body that holds the user's text, in any
        provider's format; its word count is the prompt token count.
        """
        if self.next_chunks is not None:
            pieces = [str(piece) for piece in self.next_chunks]
            text = "".join(pieces)
        else:
            text = self.next_answer or f"{self.provider} stand-in answer to model {model}"
            words = text.split(" ")
            if self.chunks and self.chunks > len(words):
                filler = [f"word{i}" for i in range(self.chunks - len(words))]
                text = " ".join([*words, *filler])
            pieces = split_pieces(text, self.chunks)
        patch = dict(self.usage_patch or {})
        patch.update(self.next_usage or {})
        self.next_chunks = None
        self.next_answer = None
        self.next_usage = None
        prompt_text = " ".join(collect_text(prompt))
        return AnswerPlan(
            model=model,
            response_model=self.response_models.get(model, model),
            text=text,
            pieces=pieces,
            prompt_words=count_words(prompt_text),
            completion_words=count_words(text),
            usage_patch=patch or None,
        )

    async def open_stream(
        self,
        request: web.Request,
        content_type: str = "text/event-stream; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """Send the status line and headers of a streamed response."""
        response = web.StreamResponse(
            status=200,
            headers={
                **self.response_headers(),
                "Content-Type": content_type,
                "Cache-Control": "no-cache",
                **(headers or {}),
            },
        )
        await response.prepare(request)
        request[STREAM] = response
        self._stream_bytes[id(response)] = bytearray()
        return response

    async def write_event(self, response: web.StreamResponse, data: bytes, delay: bool = True) -> None:
        """Write one stream event, sleeping `delay_per_chunk` first; raise ClientGone on a closed peer."""
        if delay and self.delay_per_chunk:
            await asyncio.sleep(self.delay_per_chunk)
        try:
            await response.write(data)
            self._stream_bytes.setdefault(id(response), bytearray()).extend(data)
        except (ConnectionResetError, ConnectionError) as error:
            raise ClientGone(str(error)) from error


def sse(data: Any, event: str | None = None, separator: str = "\n\n") -> bytes:
    """Encode one server-sent event; `data` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}{separator}".encode()


def new_id(prefix: str, length: int = 24) -> str:
    """Return a random id such as `chatcmpl-...` (ids differ per response, like the real APIs)."""
    return prefix + secrets.token_hex(length // 2)


def _default_message(status: int) -> str:
    messages = {
        400: "Invalid request (stand-in error).",
        401: "Invalid authentication (stand-in error).",
        403: "Permission denied (stand-in error).",
        404: "Not found (stand-in error).",
        429: "Rate limit reached (stand-in error).",
        500: "The server had an error while processing your request (stand-in error).",
        503: "The service is temporarily overloaded (stand-in error).",
    }
    return messages.get(status, f"HTTP {status} (stand-in error).")
