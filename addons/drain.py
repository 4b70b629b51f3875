"""The drain addon: a graceful stop on SIGTERM and Ctrl-C (SIGINT).

On the first signal the gateway closes its listeners, so no new connection is accepted, and
waits up to `meterway.drainTimeout` seconds for the requests in flight (slow streams
included) to finish. Then it calls mitmproxy's shutdown, which runs every addon's `done`
hook: costlog's writer flushes the queued rows and closes the database. A second signal
stops at once. A request that arrives on a kept-alive connection during the drain is
answered 503 with `connection: close`, in the client's API format.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from mitmproxy import ctx, http

from addons import record as flowrecord
from addons.errors import error_response

logger = logging.getLogger(__name__)

DEFAULT_DRAIN_TIMEOUT = 10.0
_LAST_WRITE_GRACE = 0.2


class Drain:
    """Counts the requests in flight and runs the drain on SIGTERM or SIGINT."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.in_flight: set[str] = set()
        self.draining = False
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def running(self) -> None:
        # Replaces mitmdump's own handlers, which would stop at once.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self.begin, signum)
            except (NotImplementedError, RuntimeError):  # no signals on this loop or thread
                return

    def begin(self, signum: int = signal.SIGTERM) -> None:
        """Start the drain; on a second call, stop without waiting."""
        if self.draining:
            logger.warning("second stop signal: exiting now with %d request(s) in flight", len(self.in_flight))
            ctx.master.shutdown()
            return
        self.draining = True
        self._task = asyncio.get_running_loop().create_task(self._drain(signal.Signals(signum).name))

    def timeout(self) -> float:
        """Return the drain time from the config in force, in seconds."""
        gateway = self.config.gateway
        section = getattr(gateway, "meterway", None)
        return float(getattr(section, "drain_timeout", DEFAULT_DRAIN_TIMEOUT))

    async def _drain(self, reason: str) -> None:
        limit = self.timeout()
        logger.info("%s: closing listeners, waiting up to %.1f s for %d request(s) in flight",
                    reason, limit, len(self.in_flight))
        started = time.monotonic()
        await self._close_listeners()
        if self.in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=limit)
            except TimeoutError:
                logger.warning("drain timed out after %.1f s; %d request(s) still in flight are cut off",
                               limit, len(self.in_flight))
        await self._close_client_connections()
        logger.info("drained in %.2f s; flushing the request log and exiting", time.monotonic() - started)
        ctx.master.shutdown()

    @staticmethod
    async def _close_client_connections(wait: float = 1.0) -> None:
        """Close the clients' idle keep-alive connections and let their handlers end.

        Otherwise asyncio cancels those handler tasks when the loop closes, and Python 3.12's
        stream callback logs each one as "Exception in callback ... CancelledError".
        """
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is None:
            return
        # mitmproxy calls the `response` hook before it writes the end of the response, so
        # give the last responses a moment to reach their clients before the sockets close.
        await asyncio.sleep(_LAST_WRITE_GRACE)
        for handler in list(proxyserver.connections.values()):
            # NOTE: `transports` is mitmproxy's internal map of connection to reader/writer
            # (12.x); without it the connections are left for asyncio to cancel.
            io = getattr(handler, "transports", {}).get(handler.client)
            if io is not None and io.writer is not None:
                io.writer.close()
        deadline = time.monotonic() + wait
        while proxyserver.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    @staticmethod
    async def _close_listeners() -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is None:
            return
        try:
            await proxyserver.servers.update([])
        except Exception:  # the drain must still end in a shutdown
            logger.exception("closing the listeners failed; draining anyway")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live:
            return
        if self.draining and flow.response is None:
            rec = flowrecord.get(flow)
            message = "the gateway is shutting down; retry the request shortly"
            if rec is not None:
                rec["outcome"] = "gateway_error"
                rec["error"] = message
            flow.response = error_response(503, message, code="shutting_down",
                                           api=rec.get("api") if rec else None,
                                           headers={"connection": "close", "retry-after": "1"})
            return
        self.in_flight.add(flow.id)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self.in_flight.discard(flow.id)
        if not self.in_flight:
            self._idle.set()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)
