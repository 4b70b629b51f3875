"""Opening the request log file: for the writer (creating or migrating it) and for readers."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from addons.store_schema import ensure_schema



class StoreError(Exception):
    """The request log cannot be opened at the configured path."""


def open_readonly(path: Path | str) -> sqlite3.Connection:
    """Open the live request log read-only (not immutable, because the gateway writes it)."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise StoreError(
            f"request log {resolved} not found; start the gateway once to create it, "
            "or check config.database.url"
        )
    conn = sqlite3.connect(resolved.as_uri() + "?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def open_for_writing(path: Path | str, *, busy_timeout: float = 5.0) -> sqlite3.Connection:
    """Open the request log for writing (WAL, synchronous=NORMAL) and create or migrate it.

    The connection is in autocommit mode: `write_batch()` and `ensure_schema()` open their
    own transactions. It may be handed to one other thread, but used by one at a time.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL skips the fsync per commit in WAL mode; a power cut may lose the last
        # commits but never corrupts the file.
        conn.execute("PRAGMA synchronous = NORMAL")
        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class Throttle:
    """Let a message through at most once per interval per key, counting the rest."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> int | None:
        """Return how many messages were held back since the last one, or None to hold this one."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)
