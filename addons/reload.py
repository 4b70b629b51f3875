"""Watch the gateway config file and reload it when it changes.

mitmproxy reloads its own option files and scripts, but not a file that an option merely
names, so the config addon runs this watcher as an asyncio task. It polls the file's
identity (device, inode, size, mtime) because editors save in different ways: in place,
or by writing a new file and renaming it over the old one (a new inode). A change is acted
on only once the file has stayed the same for the debounce time, so a save that arrives in
several writes is read once, whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

# (st_dev, st_ino, st_size, st_mtime_ns), or None while the file is missing.
FileIdentity = tuple[int, int, int, int] | None

DEFAULT_POLL_INTERVAL = 0.2
DEFAULT_DEBOUNCE = 0.5


def file_identity(path: Path) -> FileIdentity:
    """Return the identity of a file's current version, or None when the file is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class ConfigWatcher:
    """Calls `on_change` once per settled change of one file, from an asyncio task."""

    def __init__(self, path: Path, on_change: Callable[[], None], *,
                 poll_interval: float = DEFAULT_POLL_INTERVAL, debounce: float = DEFAULT_DEBOUNCE) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.poll_interval = poll_interval
        self.debounce = debounce
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling on the running event loop, taking the file as it is now as loaded."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="meterway config watcher")
        logger.info("watching %s for changes", self.path)

    def stop(self) -> None:
        """Stop polling; a reload already running finishes."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        loaded = file_identity(self.path)
        while True:
            await asyncio.sleep(self.poll_interval)
            current = file_identity(self.path)
            if current == loaded:
                continue
            settled = await self._settle(current)
            if settled is None:
                # Deleted, or in the middle of a rename: keep the config in force and look again.
                continue
            loaded = settled
            try:
                self.on_change()
            except Exception:  # a bug in a reload must not end the watching
                logger.exception("reloading %s failed; the previous config stays in force", self.path)

    async def _settle(self, seen: FileIdentity) -> FileIdentity:
        """Wait until the file has not changed for `debounce` seconds; return its identity."""
        while True:
            await asyncio.sleep(self.debounce)
            now = file_identity(self.path)
            if now == seen:
                return now
            seen = now
