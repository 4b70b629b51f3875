"""Serving a stand-in: ports, TLS, and running inside a loop or from a background thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web

from tests.standins.tls import TestCA

logger = logging.getLogger(__name__)


class ServerLifecycle:
    """Start and stop an aiohttp app on a free port of 127.0.0.1, in a loop or a thread.

    Subclasses provide `add_routes`, the `_middleware` and `_unknown_path` handlers.
    """

    provider: ClassVar[str] = "base"
    tls: bool
    ca: TestCA | None
    host_names: tuple[str, ...]
    port: int | None
    _runner: web.AppRunner | None
    _loop: asyncio.AbstractEventLoop | None
    _thread: threading.Thread | None
    _middleware: Any
    _unknown_path: Any

    # -- addresses -------------------------------------------------------------------

    @property
    def hostport(self) -> str:
        """Return `127.0.0.1:PORT` of the running server."""
        if self.port is None:
            raise RuntimeError(f"{type(self).__name__} is not running: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Return the base URL, `http://127.0.0.1:PORT` or `https://...` with tls=True."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.hostport}"

    @property
    def ca_pem_path(self) -> Path | None:
        """Return the PEM file of the CA that signed this server's certificate (TLS only)."""
        return self.ca.ca_pem_path if self.ca else None

    # -- lifecycle -------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register the provider's routes on `app`; subclasses implement this."""
        raise NotImplementedError

    async def start(self) -> None:
        """Start serving on a free port of 127.0.0.1."""
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._unknown_path)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        ssl_context = self.ca.server_context(self.host_names) if self.tls and self.ca else None
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        logger.info("%s stand-in listening on %s", self.provider, self.url)

    async def stop(self) -> None:
        """Stop serving and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            logger.info("%s stand-in on port %s stopped", self.provider, self.port)

    async def __aenter__(self) -> ServerLifecycle:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 10.0) -> ServerLifecycle:
        """Start serving from a new event loop in a daemon thread; return self."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:  # reported to the caller below
                failure.append(error)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"standin-{self.provider}", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError(f"{self.provider} stand-in did not start within {timeout} s")
        if failure:
            raise failure[0]
        return self

    def stop_in_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with start_in_thread() and join its thread."""
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.stop(), self._loop)
        future.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> ServerLifecycle:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_in_thread()
