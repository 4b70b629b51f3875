"""Retention of the request log: delete old rows, and bodies beyond a size cap, in small batches.

`meterway.retention.days` deletes whole requests (their `requests` row, `payloads` row and
full-text entry) once they are older than that. `meterway.retention.maxDatabaseBytes` deletes
bodies (`payloads` rows and full-text entries), oldest first, while the pages in use exceed the
cap. The `requests` rows stay, so counts, tokens and costs are kept. The hourly rollups are
never touched, so the Analytics history outlives both.

The writer thread calls `retention_step` when its queue is empty. Each call deletes at most one
batch in one short transaction, so a burst of new rows waits for at most one batch.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
DEFAULT_BATCH = 200


@dataclass(frozen=True)
class RetentionPolicy:
    """The retention settings: maximum row age in `days`, maximum database size in `max_bytes`."""

    days: float | None = None
    max_bytes: int | None = None

    @property
    def enabled(self) -> bool:
        """Return True when the policy deletes anything at all."""
        return self.days is not None or self.max_bytes is not None


@dataclass(frozen=True)
class RetentionStep:
    """The result of one `retention_step` call: rows deleted, and whether more are due."""

    requests_deleted: int = 0
    payloads_deleted: int = 0
    more: bool = False


def used_bytes(conn: sqlite3.Connection) -> int:
    """Return the bytes of the database's pages in use (the file minus its free pages)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size


def retention_step(conn: sqlite3.Connection, policy: RetentionPolicy, *, now_ms: int | None = None,
                   batch: int = DEFAULT_BATCH) -> RetentionStep:
    """Delete at most one batch of what the policy no longer keeps; return what was done.

    `conn` must be in autocommit mode (as `open_for_writing` makes it): the step opens its
    own transaction.
    """
    if policy.days is not None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now - int(policy.days * DAY_MS)
        rowids = [row[0] for row in conn.execute(
            "SELECT rowid FROM requests WHERE started_ms < ? ORDER BY started_ms LIMIT ?", (cutoff, batch))]
        if rowids:
            deleted = _delete_requests(conn, rowids)
            return RetentionStep(requests_deleted=deleted, payloads_deleted=deleted, more=len(rowids) == batch)
    if policy.max_bytes is not None and used_bytes(conn) > policy.max_bytes:
        deleted = _delete_oldest_bodies(conn, batch)
        return RetentionStep(payloads_deleted=deleted, more=deleted > 0)
    return RetentionStep()


def _delete_requests(conn: sqlite3.Connection, rowids: list[int]) -> int:
    marks = ",".join("?" * len(rowids))
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"DELETE FROM payloads WHERE request_id IN (SELECT id FROM requests WHERE rowid IN ({marks}))",
                     rowids)
        conn.execute(f"DELETE FROM requests_fts WHERE rowid IN ({marks})", rowids)
        deleted = conn.execute(f"DELETE FROM requests WHERE rowid IN ({marks})", rowids).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return deleted


def _delete_oldest_bodies(conn: sqlite3.Connection, batch: int) -> int:
    rows = conn.execute(
        "SELECT payloads.rowid, requests.rowid FROM payloads JOIN requests ON requests.id = payloads.request_id "
        "ORDER BY requests.started_ms LIMIT ?", (batch,)).fetchall()
    if not rows:
        return 0
    payload_rowids = [row[0] for row in rows]
    request_rowids = [row[1] for row in rows]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"DELETE FROM payloads WHERE rowid IN ({','.join('?' * len(payload_rowids))})",
                     payload_rowids)
        conn.execute(f"DELETE FROM requests_fts WHERE rowid IN ({','.join('?' * len(request_rowids))})",
                     request_rowids)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(rows)


class RetentionRunner:
    """Runs retention steps in the writer's idle time, pausing `interval` seconds once no work is left."""

    def __init__(self, policy: RetentionPolicy, *, interval: float = 60.0, batch: int = DEFAULT_BATCH) -> None:
        self.policy = policy
        self.interval = interval
        self.batch = batch
        self._next_at = 0.0
        self.requests_deleted = 0
        self.payloads_deleted = 0

    def idle(self, conn: sqlite3.Connection) -> None:
        """Delete one batch if one is due; call when the writer's queue is empty."""
        if not self.policy.enabled or time.monotonic() < self._next_at:
            return
        try:
            step = retention_step(conn, self.policy, batch=self.batch)
        except sqlite3.Error as error:
            logger.warning("request log retention failed (%s); retrying in %.0f s", error, self.interval)
            self._next_at = time.monotonic() + self.interval
            return
        self.requests_deleted += step.requests_deleted
        self.payloads_deleted += step.payloads_deleted
        if step.requests_deleted or step.payloads_deleted:
            logger.info("request log retention deleted %d request(s) and %d body row(s)",
                        step.requests_deleted, step.payloads_deleted)
        if not step.more:
            self._next_at = time.monotonic() + self.interval
