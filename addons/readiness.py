"""The readiness addon: `GET /healthz/ready` on `config.readinessAddr`, as agentgateway serves it.

It returns 200 only when every configured listener is accepting connections, the semantic
router's gRPC channel is connected (when the config has a gateway `extProc` policy), and the
request log's writer thread is running (when the config has a database). Otherwise it answers
503 with a JSON body that lists what is not ready, so a supervisor or load balancer holds
traffic back, and a person reading the body knows what to fix. The server is a few lines of
HTTP/1.1 on mitmproxy's own event loop, so each check reads state without locks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from mitmproxy import ctx

logger = logging.getLogger(__name__)

READY_PATH = "/healthz/ready"
# agentgateway's default readiness port; the host defaults to loopback.
DEFAULT_READINESS_HOST = "127.0.0.1"
DEFAULT_READINESS_PORT = 15021


def parse_readiness_addr(value: Any) -> tuple[str, int] | None:
    """Return (host, port) for `config.readinessAddr`, or None for `off`.

    Unset, and an address without a host (`:15021`), mean 127.0.0.1, because the page lists
    which parts of the gateway are down and that is for the operator only.
    """
    if value is None:
        return DEFAULT_READINESS_HOST, DEFAULT_READINESS_PORT
    text = "off" if value is False else str(value).strip()
    if text == "off":
        return None
    if text.startswith("unix:"):
        raise ValueError(f"readinessAddr {value!r}: unix sockets are not supported by meterway yet; "
                         "use HOST:PORT, e.g. 127.0.0.1:15021, or off")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid readinessAddr {value!r}; write HOST:PORT (e.g. 127.0.0.1:15021) or off")
    return host.strip("[]") or DEFAULT_READINESS_HOST, int(port_text)


class Readiness:
    """Serves the readiness probe and computes what is not ready."""

    def __init__(self, config: Any, router: Any, costlog: Any, drain: Any | None = None) -> None:
        self.config = config
        self.router = router
        self.costlog = costlog
        self.drain = drain
        # The address being served (with the real port when 0 was asked for).
        self.address: tuple[str, int] | None = None
        self._requested: tuple[str, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._running = False
        config.on_reload(self._reconfigure)

    def problems(self) -> list[str]:
        """Return one line per part of the gateway that is not ready; empty when ready."""
        found: list[str] = []
        if self.drain is not None and self.drain.draining:
            found.append("the gateway is shutting down")
        found.extend(self._listener_problems())
        gateway = self.config.gateway
        if gateway is not None and gateway.gateway_ext_proc() is not None:
            client = self.router.calls.client
            state = client.channel_state() if client is not None else "not started"
            if state != "READY":
                found.append(f"semantic router channel is {state.lower().replace('_', ' ')}, not connected")
        if gateway is not None and gateway.database_path() is not None:
            store = self.costlog.store
            if store is None or not store.running:
                found.append("request log writer is not running")
        return found

    def _listener_problems(self) -> list[str]:
        proxyserver = ctx.master.addons.get("proxyserver")
        serving: set[int] = set()
        for instance in proxyserver.servers if proxyserver is not None else ():
            if instance.is_running:
                serving.update(address[1] for address in instance.listen_addrs)
        missing = sorted(set(self.config.listeners) - serving)
        if not missing:
            return []
        return [f"listener on port {', '.join(str(port) for port in missing)} is not accepting connections"]

    async def running(self) -> None:
        self._running = True
        await self._serve()

    def _reconfigure(self, gateway: Any) -> None:
        section = getattr(gateway, "config", None)
        override = self.config.address_override("readiness")
        self._requested = parse_readiness_addr(override or getattr(section, "readiness_addr", None))
        if self._running:
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        wanted = self._requested
        if self._server is not None and wanted is not None and wanted[0] == self.address[0] \
                and wanted[1] in (0, self.address[1]):
            return
        await self._stop()
        if wanted is None:
            return
        host, port = wanted
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as error:
            logger.warning("readiness endpoint not started on %s:%s: %s; set config.readinessAddr to a free "
                         "HOST:PORT or to off", host, port, error)
            return
        self.address = (host, self._server.sockets[0].getsockname()[1])
        logger.info("readiness: http://%s:%s%s", host, self.address[1], READY_PATH)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.address = None

    async def done(self) -> None:
        await self._stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if path != READY_PATH:
                status, body = 404, {"error": f"not found; the readiness probe is GET {READY_PATH}"}
            elif method not in ("GET", "HEAD"):
                status, body = 405, {"error": f"method {method} not allowed; use GET"}
            else:
                problems = self.problems()
                status = 503 if problems else 200
                body = {"ready": not problems, "problems": problems}
            payload = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                + (payload if method != "HEAD" else b"")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a probe that hangs up or sends invalid HTTP gets no response
        finally:
            writer.close()
