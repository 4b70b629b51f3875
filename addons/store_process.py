"""The request log written by a child process, so SQLite and serialisation use another core.

With the writer as a thread, its Python work (preparing rows, the rollup sums, the flow
file format) holds the gateway's GIL: about a fifth of the gateway's CPU per request in the
profile of `bench/`. `LogWriterProcess` keeps `RequestStore`'s interface, but its thread
only ships batches through a pipe (one pickle and one write per batch). A child process runs
a `RequestStore` and builds the stored texts and flow file from each `PayloadSource`.

If the child cannot start or dies, the shipper switches to a `RequestStore` thread in this
process, starting with the batch it could not send. Rows the child had received but not yet
written are lost with it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from addons.logpayload import PayloadSource, build_payload
from addons.redact import Redactor
from addons.retention import RetentionPolicy
from addons.store import RequestStore, StoreError, StoreStats, open_for_writing

log = logging.getLogger(__name__)
# The environment variable that carries a worker's log tag, such as `[worker 1]`, to this child.
LOG_TAG_VARIABLE = "METERWAY_LOG_TAG"

# Shared counters the child keeps current: rows written, dropped and failed in the child.
_WRITTEN, _DROPPED, _FAILED = range(3)
# The child stops taking batches off the pipe while its own queue contains this many rows, so
# a slow disk fills the pipe and then the parent's bounded queue, which drops with a warning.
_CHILD_BACKLOG = 5000


class LogWriterProcess:
    """A request log in one SQLite file, written by a child process.

    From a `PayloadSource` the child builds the payload columns and the full-text pair,
    redacted with `secrets`. A payload that is already a mapping is stored as it is.
    Only the shipper thread writes to the pipe, because a `Connection` is not thread-safe.
    """

    def __init__(self, path: Path, *, retention: RetentionPolicy | None = None, secrets: tuple[str, ...] = (),
                 queue_max: int = 10000, flush_interval: float = 0.1, batch_max: int = 500) -> None:
        self.path = Path(path)
        self._retention = retention or RetentionPolicy()
        self._secrets = tuple(secrets)
        self._queue: queue.Queue[tuple[Mapping[str, Any], Any, Any]] = queue.Queue(queue_max)
        self._flush_interval = flush_interval
        self._batch_max = batch_max
        context = multiprocessing.get_context("spawn")
        self._counters = context.RawArray("q", 3)
        self._context = context
        self._process: Any = None
        self._conn: Connection | None = None
        self._fallback: RequestStore | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._sent = 0
        self._dropped = 0
        # Retention and secrets changes, sent by the shipper ahead of its next batch.
        self._controls: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._stop_timeout = 5.0

    @property
    def stats(self) -> StoreStats:
        """Return the counters of this process and the child together."""
        counters = self._counters
        with self._lock:
            sent, dropped = self._sent, self._dropped
        fallback = self._fallback.stats if self._fallback is not None else StoreStats(0, 0, 0, 0)
        done = counters[_WRITTEN] + counters[_DROPPED] + counters[_FAILED]
        return StoreStats(
            written=counters[_WRITTEN] + fallback.written,
            dropped=dropped + counters[_DROPPED] + fallback.dropped,
            failed=counters[_FAILED] + fallback.failed,
            queued=self._queue.qsize() + max(0, sent - done) + fallback.queued,
        )

    @property
    def running(self) -> bool:
        """Return True while rows are accepted and something writes them."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._closed

    def start(self) -> None:
        """Start the child and the shipping thread; raise StoreError when the folder is missing."""
        if not self.path.parent.is_dir():
            raise StoreError(
                f"folder {self.path.parent} of request log {self.path.name} does not exist; "
                "create it or change config.database.url"
            )
        # Create or migrate the schema before serving, as the thread writer does, so the UI
        # and readers find the tables as soon as the gateway serves requests.
        try:
            open_for_writing(self.path).close()
        except sqlite3.Error as error:
            log.warning("cannot open request log %s yet (%s); the writer keeps retrying", self.path, error)
        try:
            parent_end, child_end = self._context.Pipe()
            self._process = self._context.Process(
                target=_child_main, name="meterway-log-writer", daemon=True,
                args=(child_end, str(self.path), self._retention, self._secrets, self._counters))
            self._process.start()
            child_end.close()
            self._conn = parent_end
            log.info("request log writer process started on %s", self.path)
        except OSError as error:
            log.warning("request log writer process failed to start (%s); writing from a thread instead", error)
            self._use_fallback()
        self._thread = threading.Thread(target=self._ship, name="meterway-log-shipper", daemon=True)
        self._thread.start()

    def submit(self, row: Mapping[str, Any], payload: PayloadSource | Mapping[str, Any] | None = None,
               fts: tuple[str, str] | None = None) -> bool:
        """Queue one request row without blocking; return False when it was dropped."""
        if self._closed:
            self._drop("request log is stopped")
            return False
        try:
            self._queue.put_nowait((row, payload, fts))
        except queue.Full:
            self._drop(f"request log queue is full ({self._queue.maxsize} rows)")
            return False
        return True

    def set_retention(self, policy: RetentionPolicy) -> None:
        """Replace the retention policy; the child applies it at its next idle moment."""
        self._retention = policy
        self._control(("retention", policy))

    def set_secrets(self, secrets: tuple[str, ...]) -> None:
        """Replace the secrets the child removes from stored flow files."""
        self._secrets = tuple(secrets)
        self._control(("secrets", self._secrets))

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued, let the child write it and close; give up after `timeout` s."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        # The shipper sends what is queued, then the stop message with the child's share of the time.
        self._stop_timeout = max(0.5, timeout * 0.6)
        self._stopping.set()
        thread.join(max(0.1, timeout * 0.3))
        if thread.is_alive():
            log.warning("request log shipper still sending after %.1f s; the writer process may be stuck",
                        timeout * 0.3)
        if self._process is not None:
            self._process.join(max(0.1, deadline - time.monotonic()))
            if self._process.is_alive():
                log.warning("request log writer process did not finish within %.1f s; stopping it", timeout)
                self._process.kill()
                self._process.join(1)
        if self._fallback is not None:
            self._fallback.stop(max(0.5, deadline - time.monotonic()))
        self._thread = None
        log.info("request log writer stopped: %s", self.stats)

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._dropped += 1
            dropped = self._dropped
        if dropped == 1 or dropped % 1000 == 0:
            log.warning("%s; dropping request rows (%d dropped so far)", reason, dropped)

    def _control(self, message: tuple) -> None:
        if self._fallback is not None and message[0] == "retention":
            self._fallback.set_retention(message[1])
        self._controls.put(message)

    def _collect(self) -> list[tuple[Mapping[str, Any], Any, Any]]:
        """Wait for a row, then sleep out the flush interval and take everything queued.

        Sleeping instead of waking for each row keeps this thread from taking the GIL from
        the event loop once per request.
        """
        items = []
        try:
            items.append(self._queue.get(timeout=self._flush_interval))
        except queue.Empty:
            return items
        if not self._stopping.is_set():
            self._stopping.wait(self._flush_interval)
        while len(items) < self._batch_max:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _ship(self) -> None:
        while True:
            items = self._collect()
            while not self._controls.empty():
                self._send_message(self._controls.get())
            if items:
                self._send(items)
            elif self._stopping.is_set():
                self._send_message(("stop", self._stop_timeout))
                return

    def _send_message(self, message: tuple) -> bool:
        """Send one message to the child; return False when it is gone (the thread takes over)."""
        if self._conn is None:
            return False
        try:
            self._conn.send(message)
            return True
        except (OSError, ValueError) as error:
            log.warning("request log writer process is gone (%s); writing from a thread instead", error)
            self._use_fallback()
            return False

    def _send(self, items: list[tuple[Mapping[str, Any], Any, Any]]) -> None:
        if self._send_message(("rows", items)):
            with self._lock:
                self._sent += len(items)
            return
        assert self._fallback is not None
        redactor = Redactor(self._secrets)
        for row, payload, fts in items:
            self._fallback.submit(row, *_finish_payload(payload, fts, redactor))

    def _use_fallback(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        counters = self._counters
        with self._lock:
            # Rows the child took and did not write are gone, so they no longer count as queued.
            self._sent = counters[_WRITTEN] + counters[_DROPPED] + counters[_FAILED]
        if self._fallback is None:
            self._fallback = RequestStore(self.path, retention=self._retention)
            self._fallback.start()


def _finish_payload(payload: Any, fts: tuple[str, str] | None,
                    redactor: Redactor) -> tuple[Mapping[str, Any] | None, tuple[str, str] | None]:
    """Build the payload columns and full-text pair of a `PayloadSource`; others pass as they are."""
    if isinstance(payload, PayloadSource):
        return build_payload(payload, redactor)
    return payload, fts


def _child_main(conn: Connection, path: str, retention: RetentionPolicy, secrets: tuple[str, ...],
                counters: Any) -> None:
    """Write rows from the pipe until the parent sends stop or closes the pipe."""
    # Ctrl-C in a terminal reaches the whole process group, so the gateway decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Warnings only: the gateway already logs the writer's start and stop with its counts.
    # A worker of `meterway run --workers` sets its tag in the environment the child inherits.
    tag = os.environ.get(LOG_TAG_VARIABLE, "")
    logging.basicConfig(level=logging.WARNING, format=f"[%(asctime)s] {tag + ' ' if tag else ''}%(message)s",
                        datefmt="%H:%M:%S")
    store = RequestStore(Path(path), retention=retention)
    store.start()
    redactor = Redactor(secrets)
    stop_timeout = 5.0

    def publish() -> None:
        stats = store.stats
        counters[_WRITTEN], counters[_DROPPED], counters[_FAILED] = stats.written, stats.dropped, stats.failed

    try:
        while True:
            if not conn.poll(0.25):
                publish()
                continue
            try:
                message = conn.recv()
            except (EOFError, OSError):
                log.warning("request log writer process: the gateway is gone; writing what is queued")
                break
            kind = message[0]
            if kind == "rows":
                for row, payload, fts in message[1]:
                    while store.stats.queued >= _CHILD_BACKLOG and store.running:
                        time.sleep(0.05)
                    try:
                        payload, fts = _finish_payload(payload, fts, redactor)
                    except Exception as error:  # the row is still stored, without its payload
                        log.warning("request %s: building the payload failed, storing the row without it: %s",
                                    row.get("id"), error)
                        payload, fts = None, None
                    store.submit(row, payload, fts)
                publish()
            elif kind == "retention":
                store.set_retention(message[1])
            elif kind == "secrets":
                redactor = Redactor(message[1])
            elif kind == "stop":
                stop_timeout = message[1]
                break
    finally:
        store.stop(stop_timeout)
        publish()
        conn.close()
        os._exit(0)
