"""Turn submitted request rows into SQL values and write a batch of them in one transaction."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from addons.store_rollup import RollupBatch
from addons.store_schema import PAYLOAD_COLUMNS, REQUEST_COLUMNS

log = logging.getLogger(__name__)

# Working keys of the flow record that are not columns (docs/DESIGN.md, "The flow record"),
# skipped without a message when a caller passes the whole record.
WORKING_KEYS = frozenset({"local", "usage_added", "catalog_provider", "replayed_client"})

_warned_keys: set[str] = set()


@dataclass(frozen=True, slots=True)
class PreparedRow:
    """One request ready to insert: column values, payload values and FTS text."""

    request: dict[str, Any]
    payload: tuple[Any, ...] | None
    fts: tuple[str, str] | None


def iso_utc(epoch_ms: int) -> str:
    """Format epoch milliseconds as UTC ISO-8601 with milliseconds and a `Z`."""
    t = time.gmtime(epoch_ms // 1000)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{epoch_ms % 1000:03d}Z"
    )


_PLAIN_TYPES = (type(None), str, int, float)
_NUMERIC_COLUMNS = frozenset(name for name, kind in REQUEST_COLUMNS.items() if kind in (int, float))


def _sql_value(table: str, column: str, value: Any, blob: bool = False) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) if blob else bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    raise TypeError(
        f"{table}.{column} got a {type(value).__name__} ({value!r:.80}); "
        "pass str, int, float, bytes, a JSON-serialisable dict or list, or None"
    )


def _warn_unknown(keys: set[str]) -> None:
    for key in sorted(keys - _warned_keys - WORKING_KEYS):
        _warned_keys.add(key)
        log.warning(
            "request row key %r is not a requests column and is not stored; add it to "
            "REQUEST_COLUMNS in addons/store_schema.py and to docs/DESIGN.md to keep it",
            key,
        )


def prepare(
    row: Mapping[str, Any],
    payload: Mapping[str, Any] | None,
    fts: tuple[str | None, str | None] | None,
    now_ms: int,
) -> PreparedRow:
    """Check and convert one submitted row; raise TypeError for a value SQLite cannot store.

    A row without `id` gets a random one, without `started_ms` the time it was written, and
    without `started_at` the ISO form of `started_ms`, so that no row is lost to a gap.
    """
    unknown = set(row) - REQUEST_COLUMNS.keys()
    if unknown:
        _warn_unknown(unknown)

    request: dict[str, Any] = {}
    for name in REQUEST_COLUMNS:
        value = row.get(name)
        kind = type(value)
        # Exact type checks first: nearly every value is one of these, and this loop runs
        # once per column of every logged request.
        if kind is not str and kind is not int and kind is not float and value is not None:
            value = _sql_value("requests", name, value)
        if name in _NUMERIC_COLUMNS and value is not None and type(value) not in (int, float):
            # The rollup adds these up, so a number sent as text would fail the whole batch.
            raise TypeError(f"requests.{name} must be a number or None, got {value!r:.80}")
        request[name] = value
    if not request["id"]:
        request["id"] = uuid.uuid4().hex
    if request["started_ms"] is None:
        request["started_ms"] = now_ms
    request["started_ms"] = int(request["started_ms"])
    if not request["started_at"]:
        request["started_at"] = iso_utc(request["started_ms"])
    if request["is_replay"] is None:
        request["is_replay"] = 0

    payload_values = None
    if payload is not None:
        values = [request["id"]]
        for name in list(PAYLOAD_COLUMNS)[1:]:
            values.append(_sql_value("payloads", name, payload.get(name), blob=name == "flow"))
        payload_values = tuple(values)

    fts_values = None
    if fts is not None and (fts[0] or fts[1]):
        fts_values = (fts[0] or "", fts[1] or "")
    return PreparedRow(request, payload_values, fts_values)


@functools.cache
def _request_sql() -> str:
    names = ", ".join(REQUEST_COLUMNS)
    marks = ", ".join("?" for _ in REQUEST_COLUMNS)
    return f"INSERT INTO requests (rowid, {names}) VALUES (?, {marks})"


@functools.cache
def _payload_sql() -> str:
    names = ", ".join(PAYLOAD_COLUMNS)
    marks = ", ".join("?" for _ in PAYLOAD_COLUMNS)
    return f"INSERT INTO payloads ({names}) VALUES ({marks}) ON CONFLICT (request_id) DO NOTHING"


# OR REPLACE: an index entry left behind by a deleted request must not block its rowid.
_FTS_SQL = "INSERT OR REPLACE INTO requests_fts (rowid, prompt, answer) VALUES (?, ?, ?)"


def _new_rows(conn: sqlite3.Connection, rows: Sequence[PreparedRow]) -> tuple[list[PreparedRow], list[str]]:
    """Split off rows whose id is already stored or repeats earlier in the batch."""
    ids = [prepared.request["id"] for prepared in rows]
    stored: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" for _ in chunk)
        stored.update(i for (i,) in conn.execute(f"SELECT id FROM requests WHERE id IN ({marks})", chunk))
    fresh, duplicates = [], []
    for prepared in rows:
        request_id = prepared.request["id"]
        if request_id in stored:
            duplicates.append(request_id)
        else:
            stored.add(request_id)
            fresh.append(prepared)
    return fresh, duplicates


def write_batch(
    conn: sqlite3.Connection, rows: Sequence[PreparedRow], bounds: Sequence[float]
) -> tuple[int, list[str]]:
    """Insert rows, payloads, FTS entries and rollup sums in one write transaction.

    Returns the number of requests inserted and the ids skipped as duplicates. On any error
    the transaction is rolled back, so a retry writes the whole batch again.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        fresh, duplicates = _new_rows(conn, rows)
        # BEGIN IMMEDIATE holds the write lock, so no other writer can take these rowids
        # before COMMIT; assigning them here lets executemany insert the whole batch and
        # gives requests_fts its rowids without a query per row.
        first = conn.execute("SELECT coalesce(max(rowid), 0) + 1 FROM requests").fetchone()[0]
        rowids = range(first, first + len(fresh))
        conn.executemany(
            _request_sql(), [(rowid, *prepared.request.values()) for rowid, prepared in zip(rowids, fresh)]
        )
        conn.executemany(_payload_sql(), [prepared.payload for prepared in fresh if prepared.payload])
        conn.executemany(
            _FTS_SQL, [(rowid, *prepared.fts) for rowid, prepared in zip(rowids, fresh) if prepared.fts]
        )
        rollup = RollupBatch(bounds)
        for prepared in fresh:
            rollup.add(prepared.request)
        rollup.upsert(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(fresh), duplicates
