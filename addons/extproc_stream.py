"""One ext_proc gRPC stream: queue messages without waiting, read replies with a timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

# Short reconnect backoff, so that requests work again within about a second after the
# router restarts. gRPC's defaults start at 1 s and grow to 120 s, during which every
# request would fail at once.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A buffered request body may be as large as maxBufferSize (32 MiB for LLM requests in
    # agentgateway), and gRPC's default limit for a received message is 4 MiB.
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class RouterFailure(Exception):
    """The router failed one exchange: unreachable, too slow, or a reply that breaks the protocol.

    `code` is `router_timeout`, `router_unavailable` or `router_protocol_error`.
    """

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class ProcessStream:
    """A bidirectional `ExternalProcessor.Process` call for one HTTP request.

    `send` only queues, so synchronous code (mitmproxy's stream callbacks) can use it;
    a task inside grpc.aio writes the queue to the call.
    """

    def __init__(self, stub: pb_grpc.ExternalProcessorStub, message_timeout: float) -> None:
        self._queue: asyncio.Queue[pb.ProcessingRequest | None] = asyncio.Queue()
        self._message_timeout = message_timeout
        self._half_closed = False
        self.call = stub.Process(self._requests())

    async def _requests(self) -> AsyncIterator[pb.ProcessingRequest]:
        while True:
            message = await self._queue.get()
            if message is None:
                return
            yield message

    def send(self, message: pb.ProcessingRequest) -> None:
        """Queue one message for the router without waiting."""
        if not self._half_closed:
            self._queue.put_nowait(message)

    async def receive(self, timeout: float | None = -1.0) -> pb.ProcessingResponse | None:
        """Wait for the router's next reply; return None when it closed the stream cleanly.

        `timeout` defaults to the message timeout; None waits without a limit. Raises
        RouterFailure on a gRPC error or when no reply arrives in time.
        """
        limit = self._message_timeout if timeout is not None and timeout < 0 else timeout
        try:
            reply = await asyncio.wait_for(self.call.read(), limit)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # grpc.aio raises CancelledError from read() when the call itself was
            # cancelled, for example because the client's channel was closed.
            raise RouterFailure("the stream was cancelled (the ext_proc client was closed)",
                                "router_unavailable") from None
        except TimeoutError:
            self.cancel()
            raise RouterFailure(f"no reply within {limit:g} s (message timeout)", "router_timeout") from None
        except grpc.aio.AioRpcError as error:
            raise RouterFailure(describe_rpc_error(error), code_for(error)) from None
        if reply is grpc.aio.EOF:
            return None
        return reply

    def half_close(self) -> None:
        """Tell the router no more messages follow, as Envoy does at the end of a request."""
        if not self._half_closed:
            self._half_closed = True
            self._queue.put_nowait(None)

    def cancel(self) -> None:
        """Abort the call, for example after a failure or a timeout."""
        self._half_closed = True
        self.call.cancel()

    async def finish(self, grace: float) -> None:
        """Half-close, read what the router still sends for up to `grace` seconds, then cancel.

        Reading matters: grpc.aio reports the end of a call only after its replies are read.
        The caller must make sure nothing else reads the call at the same time.
        """
        self.half_close()
        if self.call.done():
            return
        try:
            async with asyncio.timeout(grace):
                while await self.call.read() is not grpc.aio.EOF:
                    pass
        except TimeoutError:
            logger.debug("ext_proc stream still open %.1f s after half-close; cancelling it", grace)
            self.cancel()
        except grpc.aio.AioRpcError:
            self.cancel()


def describe_rpc_error(error: grpc.aio.AioRpcError) -> str:
    """Return a one-line reason for a failed call, without metadata."""
    code = error.code()
    details = (error.details() or "").splitlines()[0:1]
    text = details[0] if details else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"router unreachable (gRPC UNAVAILABLE: {text})"
    return f"router closed the stream with gRPC {code.name}: {text}"


def code_for(error: grpc.aio.AioRpcError) -> str:
    """Map a gRPC status to the failure code that picks the HTTP status (504 or 500)."""
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "router_timeout"
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return "router_unavailable"
    return "router_protocol_error"
