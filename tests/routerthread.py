"""Run the stand-in ext_proc router from a background thread, for synchronous tests."""

from __future__ import annotations

import asyncio
import threading

from tests.standins.extproc_server import ExtProcServer


class ThreadedRouter:
    """The stand-in router on its own event loop; start, stop and restart on one port."""

    def __init__(self, mode: str = "keywords", port: int = 0, **kwargs: object) -> None:
        self.server = ExtProcServer(mode=mode, port=port, **kwargs)  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="standin-router", daemon=True)
        self.thread.start()

    def _call(self, coroutine: object, timeout: float = 10.0) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    @property
    def target(self) -> str:
        return self.server.target

    def start(self) -> ThreadedRouter:
        self._call(self.server.start())
        return self

    def stop(self) -> None:
        self._call(self.server.stop())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
