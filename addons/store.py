"""The request log: a queue the event loop fills and one thread that writes it to SQLite.

`RequestStore.submit()` only puts the row on a bounded `queue.Queue`, so it never blocks the
asyncio loop. The writer thread takes batches off the queue and writes each one in a single
transaction: `requests`, `payloads`, `requests_fts`, the `rollup_hour` sums and their narrow
summaries `rollup_dimension_hour` and `rollup_latency_hour`. A full queue
drops rows; a failing database (locked, read-only, disk full, file deleted) makes the writer
retry a batch for a bounded time, then count it as failed and go on. Neither ever fails a
request. The tables are described in `addons/store_schema.py`.

Readers (the UI, tests, anyone's SQL) use `open_readonly()` and the histogram helpers here.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addons.store_rollup import (
    default_latency_bounds,
    merge_hists,
    percentile_from_hist,
    status_class,
)
from addons.store_open import StoreError, Throttle, open_for_writing, open_readonly
from addons.store_schema import read_latency_bounds
from addons.retention import RetentionPolicy, RetentionRunner
from addons.store_write import PreparedRow, prepare, write_batch

__all__ = [
    "RequestStore",
    "StoreError",
    "StoreStats",
    "latency_bounds",
    "merge_hists",
    "open_for_writing",
    "open_readonly",
    "percentile_from_hist",
    "read_latency_bounds",
    "status_class",
]

log = logging.getLogger(__name__)

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters of one `RequestStore` since it was created."""

    written: int
    dropped: int
    failed: int
    queued: int


class _FileReplaced(Exception):
    """The database file was deleted or replaced while a batch was being written."""


def latency_bounds() -> list[float]:
    """Return the finite upper bounds (ms) of the latency buckets a new file gets."""
    return default_latency_bounds()


class RequestStore:
    """A request log in one SQLite file, written by one daemon thread."""

    def __init__(
        self,
        path: Path,
        *,
        queue_max: int = 10000,
        batch_max: int = 500,
        flush_interval: float = 0.25,
        busy_timeout: float = 5.0,
        retry_for: float = 30.0,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.path = Path(path)
        # Runs in the writer's idle time; replaced by `set_retention` on a config reload.
        self.retention = RetentionRunner(retention or RetentionPolicy())
        self._queue: queue.Queue[tuple[Mapping[str, Any], Any, Any, int]] = queue.Queue(queue_max)
        self._batch_max = batch_max
        self._flush_interval = flush_interval
        self._busy_timeout = busy_timeout
        self._retry_for = retry_for

        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        self._bounds: list[float] = default_latency_bounds()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._closed = False

        self._lock = threading.Lock()
        self._written = 0
        self._dropped = 0
        self._failed = 0
        self._throttle = Throttle()

    @property
    def stats(self) -> StoreStats:
        """Return a snapshot of the counters and the current queue length."""
        with self._lock:
            return StoreStats(self._written, self._dropped, self._failed, self._queue.qsize())

    @property
    def running(self) -> bool:
        """Return True while the writer thread is alive and accepting rows."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._closed

    def start(self) -> None:
        """Open the database (creating or migrating it) and start the writer thread.

        Raises StoreError when the folder does not exist. Any SQLite error is logged and left
        to the writer, which keeps trying to open the file.
        """
        if not self.path.parent.is_dir():
            raise StoreError(
                f"folder {self.path.parent} of request log {self.path.name} does not exist; "
                "create it or change config.database.url"
            )
        try:
            self._open()
        except sqlite3.Error as error:
            log.warning("cannot open request log %s yet (%s); the writer keeps retrying", self.path, error)
        self._thread = threading.Thread(target=self._run, name="meterway-store", daemon=True)
        self._thread.start()
        log.info("request log writer started on %s", self.path)

    def submit(
        self,
        row: Mapping[str, Any],
        payload: Mapping[str, Any] | None = None,
        fts: tuple[str, str] | None = None,
    ) -> bool:
        """Queue one request row without blocking; return False when it was dropped."""
        if self._closed:
            self._drop("request log is stopped")
            return False
        try:
            self._queue.put_nowait((row, payload, fts, int(time.time() * 1000)))
        except queue.Full:
            self._drop(f"request log queue is full ({self._queue.maxsize} rows)")
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close the database; give up after `timeout` seconds."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        # Leave part of the timeout for the last transaction and the close.
        self._stop_deadline = time.monotonic() + timeout * 0.8
        self._stopping.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "request log writer did not finish within %.1f s; %d rows still queued",
                timeout,
                self._queue.qsize(),
            )
        else:
            log.info("request log writer stopped: %s", self.stats)
        self._thread = None

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._dropped += 1
            dropped = self._dropped
        if self._throttle.ready("drop") is not None:
            log.warning("%s; dropping request rows (%d dropped so far)", reason, dropped)

    def _count(self, *, written: int = 0, failed: int = 0) -> None:
        with self._lock:
            self._written += written
            self._failed += failed

    def _open(self) -> None:
        conn = open_for_writing(self.path, busy_timeout=self._busy_timeout)
        try:
            self._bounds = read_latency_bounds(conn)
            stat = os.stat(self.path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._file_id = (stat.st_dev, stat.st_ino)

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as error:
                log.warning("closing request log %s failed: %s", self.path, error)
        self._conn = None
        self._file_id = None

    def _file_replaced(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._file_id

    def _run(self) -> None:
        while True:
            items = self._collect()
            batch = self._prepare(items)
            if batch:
                try:
                    self._write(batch)
                except Exception:
                    # A bug must not end the thread: the gateway would queue rows forever.
                    self._count(failed=len(batch))
                    if self._throttle.ready("bug") is not None:
                        log.exception("request log writer failed on %d rows", len(batch))
            elif not items and self._stopping.is_set():
                break
            elif not items and self._conn is not None:
                self.retention.idle(self._conn)
        self._close()

    def set_retention(self, policy: RetentionPolicy) -> None:
        """Replace the retention policy; the writer applies it at its next idle moment."""
        self.retention = RetentionRunner(policy)

    def _collect(self) -> list[tuple[Mapping[str, Any], Any, Any, int]]:
        """Wait for the first row, then gather more for up to `flush_interval` seconds."""
        items = []
        try:
            if self._stopping.is_set():
                items.append(self._queue.get_nowait())
            else:
                items.append(self._queue.get(timeout=self._flush_interval))
        except queue.Empty:
            return []
        deadline = time.monotonic() + self._flush_interval
        while len(items) < self._batch_max:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 or self._stopping.is_set():
                    items.append(self._queue.get_nowait())
                else:
                    items.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return items

    def _prepare(self, items: list[tuple[Mapping[str, Any], Any, Any, int]]) -> list[PreparedRow]:
        prepared = []
        for row, payload, fts, queued_ms in items:
            try:
                prepared.append(prepare(row, payload, fts, queued_ms))
            except Exception as error:
                # Any bad row from a caller costs that row only, never the writer thread.
                self._count(failed=1)
                request_id = row.get("id") if isinstance(row, Mapping) else None
                log.warning("request row %s not stored: %s", request_id, error)
        return prepared

    def _write(self, batch: list[PreparedRow]) -> None:
        """Write one batch, retrying SQLite errors until `retry_for` runs out."""
        give_up_at = time.monotonic() + self._retry_for
        delay = 0.05
        attempts = 0
        while True:
            attempts += 1
            try:
                self._write_once(batch)
            except sqlite3.IntegrityError as error:
                # A constraint fails the same way on every retry, so write rows one by one
                # and lose only those that break it.
                if len(batch) == 1:
                    self._count(failed=1)
                    log.warning("request row %s not stored: %s", batch[0].request["id"], error)
                    return
                log.warning("request log batch rejected (%s); writing its rows one by one", error)
                for prepared in batch:
                    self._write([prepared])
                return
            except (sqlite3.Error, _FileReplaced) as error:
                busy = (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES
                if not busy:
                    # Read-only, I/O and "file moved" errors stick to a connection.
                    self._close()
                deadline = min(give_up_at, self._stop_deadline)
                now = time.monotonic()
                if now >= deadline:
                    self._count(failed=len(batch))
                    held = self._throttle.ready("gave_up")
                    if held is not None:
                        log.warning(
                            "request log %s: %d rows not written after %d attempts (%s); "
                            "%d rows failed so far",
                            self.path, len(batch), attempts, error, self.stats.failed,
                        )
                    return
                if attempts == 1 and self._throttle.ready("retry") is not None:
                    log.warning(
                        "request log %s write failed (%s); retrying for up to %.0f s",
                        self.path, error, self._retry_for,
                    )
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 1.0)
                continue
            if attempts > 1:
                log.info("request log %s writable again after %d attempts", self.path, attempts)
            return

    def _write_once(self, batch: list[PreparedRow]) -> None:
        if self._conn is not None and self._file_replaced():
            log.warning("request log %s was deleted or replaced; reopening it", self.path)
            self._close()
        if self._conn is None:
            self._open()
        assert self._conn is not None
        written, duplicates = write_batch(self._conn, batch, self._bounds)
        if self._file_replaced():
            # The commit went into the old, unlinked file: write the batch again to the new one.
            raise _FileReplaced(f"{self.path} was deleted or replaced during a write")
        self._count(written=written)
        if duplicates and self._throttle.ready("duplicate") is not None:
            log.warning("request ids already in the log were skipped: %s", ", ".join(duplicates[:5]))
