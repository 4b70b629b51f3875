"""Reads for unfiltered Analytics views that need neither `rollup_hour` nor a sort of `requests`.

A month of `rollup_hour` is about 146,000 rows for 1,000,000 requests, and summing it took
seconds. So the writer also keeps two narrow tables (see `addons/store_rollup.py`), and a
view without filters reads only those. On the benchmark log, `rollup_dimension_hour` has
about 30 rows an hour (one per value of each dimension). `rollup_latency_hour` has about 11
(one per model and provider), with histograms as BLOBs that the `meterway_hist_blob_sum`
aggregate adds up quickly. The top lists walk the `(cost_usd, started_ms)` and `(duration_ms, started_ms)`
indexes from the top, skipping entries outside the range without reading their rows.
"""

from __future__ import annotations

import json
import time
from typing import Any

from datasette import hookimpl
from datasette.database import Database

from addons.store_hist import SUM_AGGREGATE, register_hist_functions

from .time_range import TimeRange

NARROW_TABLES = ("rollup_dimension_hour", "rollup_latency_hour")
_RECHECK_SECONDS = 5.0
# Database path -> (has the narrow tables, when that was checked). Found tables stay found.
_seen: dict[str, tuple[bool, float]] = {}


@hookimpl
def prepare_connection(conn: Any) -> None:
    """Register the histogram BLOB functions on every Datasette connection."""
    register_hist_functions(conn)


async def has_narrow_tables(db: Database) -> bool:
    """Tell whether the file has the narrow summaries (schema version 4 and later).

    A file the gateway has not reopened since an upgrade still lacks them; the page then
    reads `rollup_hour`. A False result is checked again after a few seconds.
    """
    key = str(db.path)
    known = _seen.get(key)
    if known and (known[0] or time.monotonic() - known[1] < _RECHECK_SECONDS):
        return known[0]
    marks = ", ".join("?" for _ in NARROW_TABLES)
    rows = await db.execute(
        f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",
        list(NARROW_TABLES))
    found = rows.first()[0] == len(NARROW_TABLES)
    _seen[key] = (found, time.monotonic())
    return found


async def dimension_sums(db: Database, tr: TimeRange, dimension: str,
                         summed: tuple[str, ...]) -> list[tuple[int, str, list[float]]]:
    """Sum one dimension's `rollup_dimension_hour` rows per chart bucket and value.

    Returns (bucket start, value, sums in `summed` order). Buckets start at the viewer's
    local bucket edges, as `TimeRange.local_bucket` computes them.
    """
    sums = ", ".join(f"sum({name})" for name in summed)
    sql = (
        "SELECT ((bucket_ms + :offset_ms) / :bucket_ms) * :bucket_ms - :offset_ms AS bucket, "
        f"value, {sums} FROM rollup_dimension_hour "
        "WHERE bucket_ms >= :start AND bucket_ms < :end AND dimension = :dimension "
        "GROUP BY bucket, value"
    )
    params = {"start": tr.start_ms, "end": tr.end_ms, "offset_ms": tr.offset_minutes * 60_000,
              "bucket_ms": tr.bucket_ms, "dimension": dimension}
    return [(row[0], row[1], [value or 0 for value in row[2:]])
            for row in await db.execute(sql, params)]


async def dimension_values(db: Database, start_ms: int, end_ms: int) -> dict[str, set[str]]:
    """Return every value each dimension takes in [start_ms, end_ms), for the filter menus."""
    found: dict[str, set[str]] = {}
    # DISTINCT rather than GROUP BY: measured about three times faster here on a month of rows.
    rows = await db.execute(
        "SELECT DISTINCT dimension, value FROM rollup_dimension_hour "
        "WHERE bucket_ms >= ? AND bucket_ms < ?", [start_ms, end_ms])
    for dimension, value in rows:
        found.setdefault(dimension, set()).add(value)
    return found


async def model_latency(db: Database, start_ms: int, end_ms: int) -> dict[str, list[int]]:
    """Return each model's latency histogram over [start_ms, end_ms)."""
    rows = await db.execute(
        f"SELECT model, {SUM_AGGREGATE}(latency_hist) FROM rollup_latency_hour "
        "WHERE bucket_ms >= ? AND bucket_ms < ? GROUP BY model", [start_ms, end_ms])
    return {row[0]: json.loads(row[1]) for row in rows}


def top_sql(order: str, columns: str, limit: int, where: str = "1") -> str:
    """Build the query for the `limit` requests in [:lo, :hi) with the largest `order` value.

    The unary `+` keeps SQLite from choosing the `started_ms` index, which would read and
    sort every request of the range. Without it the planner cannot tell that walking the
    `order` index visits only a few entries per match. `where` adds filter terms.
    """
    return (f"SELECT {columns} FROM requests WHERE +started_ms >= :lo AND +started_ms < :hi "
            f"AND {where} AND {order} IS NOT NULL ORDER BY {order} DESC LIMIT {int(limit)}")


async def top_by_index(db: Database, start_ms: int, end_ms: int, order: str, columns: str,
                       limit: int, where: str = "1", params: dict[str, Any] | None = None,
                       time_limit_ms: int | None = None) -> list[dict[str, Any]]:
    """Return the `limit` requests in the range with the largest `order` value.

    Raises `QueryInterrupted` past `time_limit_ms` (or Datasette's own limit), which a walk
    can reach when few requests in the range match.
    """
    rows = await db.execute(top_sql(order, columns, limit, where),
                            {**(params or {}), "lo": start_ms, "hi": end_ms},
                            custom_time_limit=time_limit_ms)
    return [dict(row) for row in rows]
