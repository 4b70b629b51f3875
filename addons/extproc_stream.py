"""One ext_proc gRPC stream: write messages in order, read replies within the message timeout."""

from __future__ import annotations

import asyncio
import collections
import logging

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from addons.extproc_deadline import StreamDeadline

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

# Exceptions from a write or half-close on a call that has already ended: grpc.aio's
# InvalidStateError, the call's status as AioRpcError, or a failed batch in gRPC core.
_CALL_ENDED = (asyncio.InvalidStateError, grpc.aio.AioRpcError, grpc.aio.BaseError)


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

    The call is created without a request iterator: an iterator would make grpc.aio run a
    task per call that moves each message from a queue to the call. `write()` writes
    directly instead, from the session's own task. mitmproxy's stream callbacks are
    synchronous, so `send()` queues, and only then does a task write the queue, in order.
    """

    def __init__(self, stub: pb_grpc.ExternalProcessorStub, message_timeout: float) -> None:
        self._message_timeout = message_timeout
        self._deadline = StreamDeadline(asyncio.get_running_loop())
        # Messages from send() and half_close() (None) that wait for the writer task.
        self._queue: collections.deque[pb.ProcessingRequest | None] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._writing = False
        self._half_closed = False
        self.call = stub.Process()

    async def write(self, message: pb.ProcessingRequest) -> None:
        """Write one message after those already queued, within the message timeout.

        A call that already ended raises nothing here: the next `receive()` reports why.
        Raises RouterFailure when the router does not take the message in time.
        """
        if self._half_closed:
            return
        if self._writing or self._writer is not None:
            self._queue.append(message)
            return

        self._writing = True
        deadline = self._deadline
        deadline.start(self._message_timeout)
        try:
            await self.call.write(message)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if deadline.expired(task):
                self.cancel()
                raise RouterFailure(f"writing a message timed out after {deadline.limit:g} s "
                                    "(message timeout)", "router_timeout") from None
            if task is not None and task.cancelling():
                raise
            # Otherwise the call itself was cancelled, and receive() reports it.
        except _CALL_ENDED:
            pass
        finally:
            deadline.stop()
            self._writing = False
            if self._queue and self._writer is None:
                self._start_writer()

    def send(self, message: pb.ProcessingRequest) -> None:
        """Queue one message for the router without waiting, for synchronous callers."""
        if self._half_closed:
            return
        self._queue.append(message)
        if self._writer is None and not self._writing:
            self._start_writer()

    def half_close(self) -> None:
        """Queue the end of the client's messages, as Envoy sends at the end of a request."""
        if not self._half_closed:
            self._half_closed = True
            self._queue.append(None)
            if self._writer is None and not self._writing:
                self._start_writer()

    async def receive(self, timeout: float | None = -1.0) -> pb.ProcessingResponse | None:
        """Wait for the router's next reply; return None when it closed the stream cleanly.

        `timeout` defaults to the message timeout; None waits without a limit. Raises
        RouterFailure on a gRPC error or when no reply arrives in time.
        """
        limit = self._message_timeout if timeout is not None and timeout < 0 else timeout
        deadline = self._deadline
        if limit is not None:
            deadline.start(limit)
        try:
            reply = await self.call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if limit is not None and deadline.expired(task):
                self.cancel()
                raise RouterFailure(f"no reply within {limit:g} s (message timeout)", "router_timeout") from None
            if task is not None and task.cancelling():
                raise
            # grpc.aio raises CancelledError from read() when the call itself was
            # cancelled, for example because the client's channel was closed.
            raise RouterFailure("the stream was cancelled (the ext_proc client was closed)",
                                "router_unavailable") from None
        except grpc.aio.AioRpcError as error:
            raise RouterFailure(describe_rpc_error(error), code_for(error)) from None
        finally:
            if limit is not None:
                deadline.stop()
        if reply is grpc.aio.EOF:
            return None
        return reply

    def cancel(self) -> None:
        """Abort the call, for example after a failure or a timeout."""
        self._half_closed = True
        self._queue.clear()
        self.call.cancel()
        self._deadline.close()

    async def finish(self, grace: float) -> None:
        """Half-close, read what the router still sends for up to `grace` seconds, then cancel.

        Reading matters: grpc.aio reports the end of a call only after its replies are read.
        The caller must make sure nothing else reads the call at the same time.
        """
        deadline = self._deadline
        if self.call.done():
            self._half_closed = True
            deadline.close()
            return
        deadline.start(grace)
        try:
            if not self._half_closed:
                self._half_closed = True
                if self._writing or self._writer is not None:
                    self._queue.append(None)
                else:
                    await self.call.done_writing()
            while await self.call.read() is not grpc.aio.EOF:
                pass
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if deadline.expired(task):
                logger.debug("ext_proc stream still open %.1f s after half-close; cancelling it", grace)
                self.cancel()
            elif task is not None and task.cancelling():
                raise
            # Otherwise the call was cancelled elsewhere, for example by closing the channel.
        except _CALL_ENDED:
            self.cancel()
        finally:
            deadline.close()

    def _start_writer(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_queue())

    async def _write_queue(self) -> None:
        try:
            while self._queue:
                message = self._queue.popleft()
                if message is None:
                    await self.call.done_writing()
                else:
                    await self.call.write(message)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # The call was cancelled, which its reader reports.
            self._queue.clear()
        except _CALL_ENDED:
            # The call ended; its reader reports why.
            self._queue.clear()
        finally:
            self._writer = None


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
