"""Schema of the request log: the tables, their columns and the numbered migrations.

Tables in the SQLite file (docs/DESIGN.md, "Request log (SQLite)", defines the meaning of
each column):

- `requests`: one row per flow. `rowid` is declared as the INTEGER PRIMARY KEY so that
  VACUUM keeps it stable, because `requests_fts` refers to it; `id` is the unique request id.
- `payloads`: one row per request that kept bodies, keyed by `request_id` (`requests.id`).
- `rollup_hour`: sums per UTC hour and dimension tuple, kept by the writer
  (see `addons/store_rollup.py`).
- `latency_buckets`: `(idx, upper_ms)`, the upper bounds of the `rollup_hour.latency_hist`
  buckets; the last bucket has `upper_ms` NULL and counts everything above the one before it.
- `rollup_dimension_hour` and `rollup_latency_hour`: narrow summaries of `rollup_hour` that
  the Analytics page reads for unfiltered views, kept by the writer in the same transaction
  (see `addons/store_rollup.py`). Both are WITHOUT ROWID tables clustered by `bucket_ms`, so
  a time range is one contiguous read. NOTE: a writer older than schema version 4 that
  appends to a migrated file updates `rollup_hour` only, so unfiltered Analytics views then
  miss its rows, and nothing in the file records that this happened.
- `requests_fts`: FTS5 over `prompt` and `answer`; its rowid is the `requests` rowid.
- `meterway_meta`: `(key, value)`; `schema_version` is the last migration step applied.

Migrations are numbered steps that run once each, in order, inside one write transaction.
After them, an additive pass creates any table, column or index this version defines and
the file lacks. A file written by a newer meterway (a higher `schema_version`) runs only that
additive pass: nothing is dropped or renamed, and the version number is never lowered. So
new columns must stay nullable or carry a default, or older writers would fail to insert.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable

import sqlite_utils

from addons.store_hist import hist_to_blob
from addons.store_rollup import (
    DIMENSIONS,
    SUM_COLUMNS,
    SUMMARY_DIMENSIONS,
    RollupBatch,
    default_latency_bounds,
    register_functions,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4

# Column name -> SQLite type, in table order. The names are a contract with the UI and
# anyone's SQL: add columns here and in docs/DESIGN.md, never rename.
REQUEST_COLUMNS: dict[str, type] = {
    "id": str,
    "started_at": str,
    "started_ms": int,
    "duration_ms": float,
    "ttft_ms": float,
    "status": int,
    "outcome": str,
    "error": str,
    "bind": int,
    "route": str,
    "backend": str,
    "provider": str,
    "upstream": str,
    "api": str,
    "client": str,
    "user_agent": str,
    "stream": int,
    "requested_model": str,
    "router_model": str,
    "routed_model": str,
    "response_model": str,
    "router_outcome": str,
    "router_ms": float,
    "router_headers": str,
    "router_error": str,
    "input_tokens": int,
    "cached_input_tokens": int,
    "cache_write_tokens": int,
    "output_tokens": int,
    "reasoning_tokens": int,
    "total_tokens": int,
    "usage_source": str,
    "cost_usd": float,
    "cost_input_usd": float,
    "cost_output_usd": float,
    "cost_cache_read_usd": float,
    "cost_cache_write_usd": float,
    "cost_status": str,
    "price_source": str,
    "trace_id": str,
    "is_replay": int,
    "replay_of": str,
}

PAYLOAD_COLUMNS: dict[str, type] = {
    "request_id": str,
    "client_request": str,
    "upstream_request": str,
    "response": str,
    "request_bytes": int,
    "response_bytes": int,
    "truncated": int,
    "body_flags": str,
    "flow": bytes,
}

# Index name -> columns, chosen for the UI's time-range filters and group-by queries.
REQUEST_INDEXES: dict[str, list[str]] = {
    "idx_requests_started_ms": ["started_ms"],
    "idx_requests_started_provider": ["started_ms", "provider"],
    "idx_requests_started_routed_model": ["started_ms", "routed_model"],
    "idx_requests_status": ["status"],
    "idx_requests_outcome": ["outcome"],
    "idx_requests_route": ["route"],
    "idx_requests_client": ["client"],
    "idx_requests_is_replay": ["is_replay"],
    "idx_requests_replay_of": ["replay_of"],
    # The Analytics page's most-expensive and slowest lists walk these from the top. With
    # `started_ms` in the entry, rows outside the range are skipped without reading the row.
    "idx_requests_cost_usd": ["cost_usd", "started_ms"],
    "idx_requests_duration_ms": ["duration_ms", "started_ms"],
}


# Columns declared NOT NULL get their default when added to an older file's table.
NOT_NULL_DEFAULTS: dict[tuple[str, str], object] = {("requests", "is_replay"): 0}


def _rollup_columns() -> dict[str, type]:
    columns: dict[str, type] = {"bucket_ms": int}
    columns.update({name: str for name in DIMENSIONS})
    for name in SUM_COLUMNS:
        columns[name] = float if name in ("cost_usd", "duration_ms_sum", "ttft_ms_sum") else int
    columns["latency_hist"] = str
    return columns


ROLLUP_COLUMNS = _rollup_columns()
DIMENSION_ROLLUP_COLUMNS: dict[str, type] = {
    "bucket_ms": int, "dimension": str, "value": str,
    **{name: ROLLUP_COLUMNS[name] for name in SUM_COLUMNS},
}
_SQL_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT"}


def _create_requests(db: sqlite_utils.Database) -> None:
    db["requests"].create(
        {"rowid": int, **REQUEST_COLUMNS},
        pk="rowid",
        not_null={"id", "started_ms", "is_replay"},
        defaults={"is_replay": 0},
        if_not_exists=True,
    )


def _create_request_indexes(db: sqlite_utils.Database) -> None:
    db["requests"].create_index(["id"], index_name="idx_requests_id", unique=True, if_not_exists=True)
    for name, columns in REQUEST_INDEXES.items():
        db["requests"].create_index(columns, index_name=name, if_not_exists=True)


def _create_payloads(db: sqlite_utils.Database) -> None:
    db["payloads"].create(
        PAYLOAD_COLUMNS,
        pk="request_id",
        foreign_keys=[("request_id", "requests", "id")],
        defaults={"truncated": 0},
        if_not_exists=True,
    )


def _create_rollup(db: sqlite_utils.Database) -> None:
    not_null = {"bucket_ms", *DIMENSIONS, *SUM_COLUMNS, "latency_hist"}
    defaults: dict[str, object] = {name: "" for name in DIMENSIONS}
    defaults.update({name: 0 for name in SUM_COLUMNS})
    defaults["latency_hist"] = "[]"
    db["rollup_hour"].create(
        ROLLUP_COLUMNS,
        pk=("bucket_ms", *DIMENSIONS),
        not_null=not_null,
        defaults=defaults,
        if_not_exists=True,
    )
    db["latency_buckets"].create({"idx": int, "upper_ms": float}, pk="idx", if_not_exists=True)
    if db["latency_buckets"].count == 0:
        bounds = default_latency_bounds()
        rows = [{"idx": i, "upper_ms": upper} for i, upper in enumerate(bounds)]
        rows.append({"idx": len(bounds), "upper_ms": None})
        db["latency_buckets"].insert_all(rows)


def _create_narrow_rollups(db: sqlite_utils.Database) -> None:
    # Written as SQL because sqlite-utils cannot create WITHOUT ROWID tables.
    sums = ", ".join(
        f"{name} {_SQL_TYPES[DIMENSION_ROLLUP_COLUMNS[name]]} NOT NULL DEFAULT 0" for name in SUM_COLUMNS
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS rollup_dimension_hour (bucket_ms INTEGER NOT NULL, "
        f"dimension TEXT NOT NULL, value TEXT NOT NULL DEFAULT '', {sums}, "
        "PRIMARY KEY (bucket_ms, dimension, value)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS rollup_latency_hour (bucket_ms INTEGER NOT NULL, "
        "model TEXT NOT NULL DEFAULT '', provider TEXT NOT NULL DEFAULT '', "
        "latency_hist BLOB NOT NULL DEFAULT x'', "
        "PRIMARY KEY (bucket_ms, model, provider)) WITHOUT ROWID"
    )


class _JsonHistToBlob:
    """SQL aggregate that adds up `rollup_hour.latency_hist` JSON arrays into one BLOB."""

    def __init__(self) -> None:
        self.total: list[int] = []

    def step(self, value: str | None) -> None:
        for i, count in enumerate(json.loads(value or "[]")):
            if i < len(self.total):
                self.total[i] += count
            else:
                self.total.append(count)

    def finalize(self) -> bytes:
        return hist_to_blob(self.total)


def _step_narrow_rollups_with_backfill(db: sqlite_utils.Database) -> None:
    """Create the narrow summary tables and fill them from `rollup_hour`.

    They are filled from `rollup_hour` rather than `requests`, because retention deletes
    old requests but never rollups, so only `rollup_hour` still covers the whole history.
    """
    _create_narrow_rollups(db)
    db.execute("DELETE FROM rollup_dimension_hour")
    db.execute("DELETE FROM rollup_latency_hour")
    sums = ", ".join(f"sum({name})" for name in SUM_COLUMNS)
    for name in SUMMARY_DIMENSIONS:
        db.execute(
            f"INSERT INTO rollup_dimension_hour (bucket_ms, dimension, value, {', '.join(SUM_COLUMNS)}) "
            f"SELECT bucket_ms, ?, {name}, {sums} FROM rollup_hour GROUP BY bucket_ms, {name}",
            [name],
        )
    db.conn.create_aggregate("meterway_migrate_hist_to_blob", 1, _JsonHistToBlob)
    # Groups whose histograms are all empty ('[]') get no row, as in the writer.
    db.execute(
        "INSERT INTO rollup_latency_hour (bucket_ms, model, provider, latency_hist) "
        "SELECT bucket_ms, model, provider, meterway_migrate_hist_to_blob(latency_hist) "
        "FROM rollup_hour GROUP BY bucket_ms, model, provider HAVING max(latency_hist <> '[]')"
    )


def _step_requests_and_payloads(db: sqlite_utils.Database) -> None:
    _create_requests(db)
    _create_request_indexes(db)
    _create_payloads(db)


def _step_rollup_with_backfill(db: sqlite_utils.Database) -> None:
    """Create the summary tables and fill them from the rows a version-1 file holds."""
    _create_rollup(db)
    bounds = read_latency_bounds(db.conn)
    batch = RollupBatch(bounds)
    cursor = db.conn.execute("SELECT * FROM requests")
    names = [d[0] for d in cursor.description]
    while chunk := cursor.fetchmany(5000):
        for values in chunk:
            batch.add(dict(zip(names, values)))
        batch.upsert(db.conn, narrow=False)
        batch = RollupBatch(bounds)


def _step_fts(db: sqlite_utils.Database) -> None:
    # Standalone (not external-content) because `requests` has no prompt or answer column.
    # NOTE: rows written before this step get no index entry; their text is only in payloads.
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS requests_fts USING fts5(prompt, answer)")


# Step number -> migration. Append new steps, never edit or renumber a released one.
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    1: _step_requests_and_payloads,
    2: _step_rollup_with_backfill,
    3: _step_fts,
    4: _step_narrow_rollups_with_backfill,
}


def _ensure_additive(db: sqlite_utils.Database) -> None:
    """Create what this version defines and the file lacks, so old and new files both work."""
    _create_requests(db)
    _create_payloads(db)
    _create_rollup(db)
    _create_narrow_rollups(db)
    _step_fts(db)
    db["meterway_meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    for table, columns in (
        ("requests", REQUEST_COLUMNS),
        ("payloads", PAYLOAD_COLUMNS),
        ("rollup_hour", ROLLUP_COLUMNS),
        ("rollup_dimension_hour", DIMENSION_ROLLUP_COLUMNS),
    ):
        present = set(db[table].columns_dict)
        for name, col_type in columns.items():
            if name not in present:
                default = NOT_NULL_DEFAULTS.get((table, name))
                db[table].add_column(name, col_type, not_null_default=default)
    # Indexes last, because an older file may have lacked an indexed column until now.
    _create_request_indexes(db)


def read_schema_version(conn: sqlite3.Connection) -> int:
    """Return the file's `schema_version`, or 0 for a file without meterway tables."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meterway_meta'"
    ).fetchone()
    if exists:
        row = conn.execute("SELECT value FROM meterway_meta WHERE key = 'schema_version'").fetchone()
        if row is not None:
            return int(row[0])
    has_requests = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
    ).fetchone()
    # A file with `requests` but no version predates the meta table: treat it as version 1.
    return 1 if has_requests else 0


def read_latency_bounds(conn: sqlite3.Connection) -> list[float]:
    """Return the file's finite bucket upper bounds in ms, in `idx` order (overflow left out)."""
    rows = conn.execute("SELECT upper_ms FROM latency_buckets ORDER BY idx").fetchall()
    return [float(upper) for (upper,) in rows if upper is not None and math.isfinite(upper)]


def ensure_schema(conn: sqlite3.Connection) -> int:
    """Create or migrate the request log schema on an autocommit connection.

    Runs inside `BEGIN IMMEDIATE`, so several gateway processes opening one file at once
    migrate it one after the other. Returns the schema version the file has afterwards.
    """
    db = sqlite_utils.Database(conn)
    register_functions(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = read_schema_version(conn)
        for step, migrate in MIGRATIONS.items():
            if step > found:
                log.info("migrating request log to schema step %d", step)
                migrate(db)
        _ensure_additive(db)
        version = max(found, SCHEMA_VERSION)
        if found > SCHEMA_VERSION:
            log.info(
                "request log schema version %d is newer than this meterway's %d; "
                "writing only the columns this version knows",
                found,
                SCHEMA_VERSION,
            )
        conn.execute(
            "INSERT INTO meterway_meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return version
