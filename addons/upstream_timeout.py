"""A deadline for the upstream's response headers: `meterway.upstreamTimeout`.

mitmproxy 12.3 has no per-request upstream timeout. Its only bound is `tcp_timeout`, an
inactivity limit of 600 s by default that is paused while hooks run and that, when it fires,
closes the client connection without any answer. So an upstream that accepts the request
and never answers would hold the client for ten minutes and then leave it with nothing.

`UpstreamDeadline` starts a timer when the router has chosen the upstream. If no response
headers arrive in time, it marks the flow record `timeout` and cancels the server
connection's task; mitmproxy then runs the error hook and writes its error page, which
`addons.errors` turns into a 504 with the message set here.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from mitmproxy import ctx, http

logger = logging.getLogger(__name__)


class UpstreamDeadline:
    """Timers that end flows whose upstream sends no response headers in time."""

    def __init__(self) -> None:
        self._timers: weakref.WeakKeyDictionary[http.HTTPFlow, asyncio.TimerHandle] = weakref.WeakKeyDictionary()

    def arm(self, flow: http.HTTPFlow, record: dict[str, Any], seconds: float) -> None:
        """Start the deadline for a flow whose upstream is chosen."""
        self.disarm(flow)
        loop = asyncio.get_running_loop()
        self._timers[flow] = loop.call_later(seconds, self._expire, flow, record, seconds)

    def disarm(self, flow: http.HTTPFlow) -> None:
        """Stop a flow's deadline: its response headers arrived or the flow ended."""
        timer = self._timers.pop(flow, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, flow: http.HTTPFlow, record: dict[str, Any], seconds: float) -> None:
        self._timers.pop(flow, None)
        if flow.response is not None or flow.error is not None or not flow.live:
            return
        record["outcome"] = "timeout"
        record["error"] = (
            f"upstream {record.get('upstream')} sent no response headers within {seconds:g} s "
            "(meterway.upstreamTimeout); check the backend, or raise meterway.upstreamTimeout "
            "for models that take longer to start answering"
        )
        logger.warning("flow %s: %s", flow.id, record["error"])
        if not _cancel_server_connection(flow):
            logger.warning("flow %s: no open server connection to cancel after the upstream timeout", flow.id)


def _cancel_server_connection(flow: http.HTTPFlow) -> bool:
    """Cancel the task that reads the flow's server connection; return whether one was found.

    NOTE: this reaches into mitmproxy 12.3's connection handlers (`Proxyserver.connections`
    and their `transports`), because mitmproxy offers no public way to end a flow in transit.
    """
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(flow.client_conn.id)
    transports = getattr(handler, "transports", None)
    if not transports:
        return False
    io = transports.get(flow.server_conn)
    task = getattr(io, "handler", None)
    if task is None or task.done():
        return False
    task.cancel("meterway upstream timeout")
    return True
