"""One ext_proc exchange: the gRPC stream for one HTTP request and its response.

The rules it follows are listed in the docstring of `addons/extproc.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from addons.extproc_body import exchange_body, observe_chunk, stop_drain
from addons.extproc_decisions import BodyDecision, HeaderDecision, RequestDecision, ResponseMode
from addons.extproc_mutations import (
    Header,
    HeaderEditor,
    ImmediateResponse,
    MutationError,
    apply_body_mutation,
    failure_response,
    headers_to_proto,
    immediate_from_proto,
    set_content_length,
)
from addons.extproc_options import BODY_MODE_TO_ENUM
from addons.extproc_stream import ProcessStream, RouterFailure

if TYPE_CHECKING:
    from addons.extproc import ExtProcClient

_CONTINUE_AND_REPLACE = pb.CommonResponse.CONTINUE_AND_REPLACE
# Seconds a closing session waits for the router to end the stream before cancelling it.
_CLOSE_GRACE = 1.0


class ExtProcSession:
    """The ext_proc exchange for one HTTP request and its response.

    Use `async with client.session() as session:` or call `close()`, so that the stream
    and its tasks end.
    """

    def __init__(self, client: ExtProcClient) -> None:
        self._client = client
        self._options = client.options
        self._stream: ProcessStream | None = None
        self._first_message = True
        self._finished = False
        self._response_done = False
        self._held_body: bytearray | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._warned_observe = False
        self.streamed_response = False

    async def __aenter__(self) -> ExtProcSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def response_mode(self) -> ResponseMode:
        """Response modes in force now, after any mode_override."""
        options = self._options
        return ResponseMode(options.response_header_mode, options.response_body_mode, options.response_trailer_mode)

    async def request(
        self,
        method: str,
        scheme: str,
        authority: str,
        path: str,
        headers: list[Header],
        body: bytes | None,
        stream: bool = False,
    ) -> RequestDecision:
        """Send the request to the router as the processing options specify, and apply its replies.

        `stream` is True when the client asked for a streamed response; the session keeps
        it for the response phase. Never raises for router failures: the decision's
        `outcome` and `immediate` carry them.
        """
        started = time.perf_counter()
        self.streamed_response = stream
        editor = HeaderEditor(headers=list(headers), path=path)
        body_bytes = body or b""
        new_body: bytes | None = None
        sent = False
        try:
            full_duplex_sent = False
            request_done = False
            if self._options.request_header_mode == "send":
                pseudo = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
                self._send(request_headers=pb.HttpHeaders(
                    headers=headers_to_proto(pseudo + list(headers)), end_of_stream=not body_bytes))
                sent = True
                if body_bytes and self._options.request_body_mode == "fullDuplexStreamed":
                    # Full duplex does not wait for the header reply before sending the body.
                    self._send(request_body=pb.HttpBody(body=body_bytes, end_of_stream=True))
                    full_duplex_sent = True
                reply = await self._expect("request_headers")
                if reply is not None and reply.WhichOneof("response") == "immediate_response":
                    return self._immediate_decision(reply, editor, started)
                if reply is not None:
                    common = reply.request_headers.response
                    editor.apply(common.header_mutation)
                    self._apply_override(reply, keep_request_body=full_duplex_sent)
                    if common.status == _CONTINUE_AND_REPLACE:
                        new_body = apply_body_mutation(common.body_mutation, body_bytes)
                        request_done = True
                        if full_duplex_sent:
                            # The body reply still on its way would arrive out of order.
                            self._fail_quietly()

            mode = "fullDuplexStreamed" if full_duplex_sent else self._options.request_body_mode
            if body_bytes and mode != "none" and not request_done and not self._finished:
                if not full_duplex_sent:
                    self._send(request_body=pb.HttpBody(body=body_bytes, end_of_stream=True))
                    sent = True
                result = await exchange_body(self, "request_body", body_bytes, mode, editor)
                if result.immediate is not None:
                    return self._immediate_decision(result.immediate, editor, started)
                if result.body is not None:
                    new_body = result.body
        except (RouterFailure, MutationError) as error:
            return self._failed_request(_as_failure(error), headers, path, started)

        if new_body is not None:
            editor.headers = set_content_length(editor.headers, new_body)
        return RequestDecision(
            headers=editor.headers, path=editor.path or path, body=new_body, immediate=None,
            outcome="ok" if sent else "skipped", error=None, latency_ms=_since(started),
            set_headers=editor.set_headers, removed_headers=editor.removed_headers,
            response_mode=self.response_mode,
        )

    async def response_headers(self, status: int, headers: list[Header], end_of_stream: bool = False) -> HeaderDecision:
        """Send the response headers when their mode is `send` and apply the reply."""
        started = time.perf_counter()
        editor = HeaderEditor(headers=list(headers), status=status)
        decision = HeaderDecision(headers=editor.headers, status=status, set_headers={}, removed_headers=[])
        if self._finished or self._options.response_header_mode != "send":
            return decision
        try:
            pseudo = [(":status", str(status))]
            self._send(response_headers=pb.HttpHeaders(
                headers=headers_to_proto(pseudo + list(headers)), end_of_stream=end_of_stream))
            reply = await self._expect("response_headers")
            decision.outcome = "ok"
            if reply is not None and reply.WhichOneof("response") == "immediate_response":
                self._finished = True
                decision.immediate = immediate_from_proto(reply.immediate_response)
                decision.outcome = "immediate_response"
            elif reply is not None:
                common = reply.response_headers.response
                editor.apply(common.header_mutation)
                self._apply_override(reply, keep_request_body=False)
                if common.status == _CONTINUE_AND_REPLACE:
                    decision.body = apply_body_mutation(common.body_mutation, b"")
                    self._response_done = True
        except (RouterFailure, MutationError) as error:
            failure = _as_failure(error)
            self._fail(failure)
            decision.outcome, decision.error, decision.immediate = self._failure_fields(failure)
            editor = HeaderEditor(headers=list(headers), status=status)
        decision.headers, decision.status = editor.headers, editor.status or status
        decision.set_headers, decision.removed_headers = editor.set_headers, editor.removed_headers
        if decision.body is not None:
            decision.headers = set_content_length(decision.headers, decision.body)
        decision.latency_ms = _since(started)
        return decision

    async def response_body(self, body: bytes, headers: list[Header] | None = None) -> BodyDecision:
        """Send a buffered response body and apply the reply; `headers` get its header mutations."""
        started = time.perf_counter()
        editor = HeaderEditor(headers=list(headers or []))
        decision = BodyDecision(body=None, headers=headers, set_headers={}, removed_headers=[])
        mode = self._options.response_body_mode
        if self._finished or self._response_done or mode == "none":
            return decision

        try:
            self._send(response_body=pb.HttpBody(body=body, end_of_stream=True))
            self._response_done = True
            result = await exchange_body(self, "response_body", body, mode, editor)
        except (RouterFailure, MutationError) as error:
            failure = _as_failure(error)
            self._fail(failure)
            decision.outcome, decision.error, decision.immediate = self._failure_fields(failure)
            decision.latency_ms = _since(started)
            return decision

        decision.outcome = "ok"
        if result.immediate is not None:
            self._finished = True
            decision.immediate = immediate_from_proto(result.immediate.immediate_response)
            decision.outcome = "immediate_response"
        decision.body = result.body
        if headers is not None:
            decision.headers = editor.headers
            if result.body is not None:
                decision.headers = set_content_length(editor.headers, result.body)
        decision.set_headers, decision.removed_headers = editor.set_headers, editor.removed_headers
        decision.latency_ms = _since(started)
        return decision

    def observe_response_chunk(self, chunk: bytes, end_of_stream: bool) -> None:
        """Queue a chunk of a streamed response for the router, observe-only, without waiting."""
        observe_chunk(self, chunk, end_of_stream)

    async def close(self) -> None:
        """End the stream: half-close, let the router finish briefly, then cancel what is left."""
        stream, self._stream = self._stream, None
        self._finished = True
        if stream is None:
            return
        # The background reader of an observed stream ends by itself once the router ends
        # the call, and only after it is gone may finish() read the rest.
        stream.half_close()
        await stop_drain(self, _CLOSE_GRACE)
        await stream.finish(_CLOSE_GRACE)

    # Internal helpers, shared with addons.extproc_body.

    def _send(self, **message: object) -> None:
        request = pb.ProcessingRequest(**message)
        if self._first_message:
            # Envoy puts the configured body modes into the first message only.
            request.protocol_config.request_body_mode = BODY_MODE_TO_ENUM[self._client.options.request_body_mode]
            request.protocol_config.response_body_mode = BODY_MODE_TO_ENUM[self._client.options.response_body_mode]
            self._first_message = False
        if self._stream is None:
            try:
                self._stream = self._client._open_stream()
            except (RuntimeError, grpc.aio.UsageError) as error:
                raise RouterFailure(f"could not open a stream: {error}", "router_unavailable") from None
        self._stream.send(request)

    async def _expect(self, kind: str) -> pb.ProcessingResponse | None:
        assert self._stream is not None
        reply = await self._stream.receive()
        if reply is None:
            # A clean close means "continue without me", as in Envoy.
            self._finished = True
            return None
        got = reply.WhichOneof("response")
        if got == kind or got == "immediate_response":
            return reply
        raise RouterFailure(f"expected a {kind} reply, got {got or 'a message without a response'}",
                            "router_protocol_error")

    def _apply_override(self, reply: pb.ProcessingResponse, keep_request_body: bool) -> None:
        if not reply.HasField("mode_override") or not self._client.options.allow_mode_override:
            return
        new = self._options.with_override(reply.mode_override)
        if keep_request_body:
            # Overrides that arrive after full-duplex streaming started do not change the request body.
            new = dataclasses.replace(new, request_body_mode=self._options.request_body_mode)
        self._options = new

    def _immediate_decision(self, reply: pb.ProcessingResponse, editor: HeaderEditor, started: float) -> RequestDecision:
        self._finished = True
        immediate = immediate_from_proto(reply.immediate_response)
        return RequestDecision(
            headers=editor.headers, path=editor.path or "", body=None, immediate=immediate,
            outcome="immediate_response", error=None, latency_ms=_since(started),
            set_headers=editor.set_headers, removed_headers=editor.removed_headers,
            response_mode=self.response_mode,
        )

    def _fail_quietly(self) -> None:
        self._finished = True
        if self._stream is not None:
            self._stream.cancel()

    def _fail(self, failure: RouterFailure) -> None:
        self._finished = True
        if self._stream is not None:
            self._stream.cancel()
        self._client._note_failure(failure)

    def _failure_fields(self, failure: RouterFailure) -> tuple[str, str, ImmediateResponse | None]:
        timed_out = failure.code == "router_timeout"
        error = f"ext_proc router {self._client.target}: {failure.reason}"
        if self._client.failure_mode == "failOpen":
            return ("timeout_failed_open" if timed_out else "failed_open"), error, None
        immediate = failure_response(self._client.target, failure.reason, failure.code)
        return ("timeout_failed_closed" if timed_out else "failed_closed"), error, immediate

    def _failed_request(self, failure: RouterFailure, headers: list[Header], path: str, started: float) -> RequestDecision:
        self._fail(failure)
        outcome, error, immediate = self._failure_fields(failure)
        return RequestDecision(
            headers=list(headers), path=path, body=None, immediate=immediate, outcome=outcome,
            error=error, latency_ms=_since(started), set_headers={}, removed_headers=[],
            response_mode=self.response_mode,
        )


def _as_failure(error: RouterFailure | MutationError) -> RouterFailure:
    if isinstance(error, RouterFailure):
        return error
    return RouterFailure(f"invalid mutation: {error}", "router_protocol_error")


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
