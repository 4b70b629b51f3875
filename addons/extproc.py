"""Envoy ext_proc client: send each HTTP request to a router such as vLLM Semantic Router.

`ExtProcClient` owns one `grpc.aio` channel; `client.session()` runs one
`ExternalProcessor.Process` stream for one HTTP request, opened on the first message.
The reply rules follow Envoy (see `addons/extproc_mutations.py` for header rules) and
the option names follow agentgateway (`addons/extproc_options.py`).

What is applied and what is observe-only, because mitmproxy has already buffered the
request but its stream callbacks for a streamed response are synchronous:

- Request side, every body mode is applied. `buffered`, `bufferedPartial` and
  `fullDuplexStreamed` all send the whole body as one `request_body` message with
  `end_of_stream` true (mitmproxy has already buffered the whole body, so there is nothing to split).
  In `fullDuplexStreamed` the body goes out right after the headers, without waiting for
  the header reply, and the router may answer with `streamed_response` chunks, which are
  joined into the new body.
- Header mutations in a body reply are applied in every body mode except `streamed`
  (reachable only through mode_override), because the gateway still holds the headers.
- Response headers (`send`) are applied: `response_headers()` awaits the reply.
- A response body that the gateway buffered (not streamed to the client) is applied in
  every body mode: `response_body()` sends it whole and awaits the reply.
- A streamed response body is observe-only: `observe_response_chunk()` queues each chunk
  (`streamed`, `fullDuplexStreamed`) or the whole body at the end of the stream
  (`buffered`, `bufferedPartial`) and never waits. Mutations and immediate responses in
  those replies are dropped with one warning per session.
- Trailers are never sent, whatever the trailer modes: LLM APIs send none, and Envoy also
  sends trailer messages only for messages that carry trailers.
- Rejected by `validate_options`: a `buffered`/`bufferedPartial` response body without
  `allowModeOverride` (it would hold an SSE stream to its end).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from addons.extproc_decisions import BodyDecision, HeaderDecision, RequestDecision, ResponseMode
from addons.extproc_mutations import ImmediateResponse
from addons.extproc_options import ProcessingOptions, validate_options
from addons.extproc_session import ExtProcSession
from addons.extproc_stream import CHANNEL_OPTIONS, ProcessStream, RouterFailure

__all__ = [
    "BodyDecision", "ExtProcClient", "ExtProcSession", "HeaderDecision", "ImmediateResponse",
    "ProcessingOptions", "RequestDecision", "ResponseMode", "validate_options",
]

logger = logging.getLogger(__name__)

FAILURE_MODES = ("failOpen", "failClosed")


class ExtProcClient:
    """One channel to an ext_proc router, shared by all sessions of the gateway.

    `message_timeout` is in seconds, per message. The default is generous because a
    router that classifies prompts on a slow CPU must not fail open by accident.
    """

    def __init__(
        self,
        target: str,
        options: ProcessingOptions,
        failure_mode: str = "failClosed",
        message_timeout: float = 60.0,
        allow_mode_override: bool = False,
    ) -> None:
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"invalid extProc failureMode {failure_mode!r}; use failOpen or failClosed")
        if message_timeout <= 0:
            raise ValueError(f"ext_proc message timeout must be positive, got {message_timeout!r} s")
        self.target = target.removeprefix("http://").removeprefix("grpc://")
        if allow_mode_override and not options.allow_mode_override:
            options = dataclasses.replace(options, allow_mode_override=True)
        self.options = options
        self.failure_mode = failure_mode
        self.message_timeout = message_timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ExternalProcessorStub | None = None
        self._last_warning = 0.0
        self._suppressed = 0

    async def start(self) -> None:
        """Open the channel; call inside the running event loop (mitmproxy's `running`)."""
        self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.ExternalProcessorStub(self._channel)
        logger.info("ext_proc client for %s started (failureMode %s)", self.target, self.failure_mode)

    def channel_state(self) -> str:
        """Return the channel's connectivity state name (`READY`, `IDLE`, `CONNECTING`, ...).

        A channel that is not `READY` is also asked to connect, so a readiness probe that
        polls this brings an idle channel up without waiting for a request.
        """
        if self._channel is None:
            return "CLOSED"
        state = self._channel.get_state(try_to_connect=True)
        return state.name

    async def close(self) -> None:
        """Close the channel, cancelling streams that are still open."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
            logger.info("ext_proc client for %s stopped", self.target)

    def session(self) -> ExtProcSession:
        """Return a session for one HTTP request; its stream opens on the first message."""
        if self._stub is None:
            raise RuntimeError(f"ext_proc client for {self.target} is not started; await start() first")
        return ExtProcSession(self)

    def _open_stream(self) -> ProcessStream:
        if self._stub is None:
            raise RuntimeError(f"ext_proc client for {self.target} is closed")
        return ProcessStream(self._stub, self.message_timeout)

    def _note_failure(self, failure: RouterFailure) -> None:
        # Ask the channel to reconnect now rather than after its backoff, so that requests
        # work again soon after the router comes back.
        if failure.code == "router_unavailable" and self._channel is not None:
            self._channel.get_state(try_to_connect=True)
        now = time.monotonic()
        if now - self._last_warning < 10.0:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        logger.warning("ext_proc router %s failed: %s; failureMode %s%s",
                       self.target, failure.reason, self.failure_mode, extra)
        self._last_warning = now
        self._suppressed = 0
