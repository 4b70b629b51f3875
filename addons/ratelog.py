"""Rate-limited log messages: one per key and interval, counting the ones held back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class LogThrottle:
    """Let a message through at most once per `interval` seconds per key."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        # Exporter threads and the event loop both report failures.
        self._lock = threading.Lock()

    def ready(self, key: str) -> int | None:
        """Return how many messages were held back since the last one, or None to hold this one."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)
