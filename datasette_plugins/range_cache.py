"""Sums and latency histograms per time bucket, read from `rollup_hour` and kept in memory.

Scanning a month of `rollup_hour` (about 144,000 rows for 1,000,000 requests) takes longer
than Datasette's 1 s query limit on a small machine, and summing its `latency_hist` JSON
arrays takes far longer. Unfiltered views read narrow tables instead (`narrow_reads.py`),
but filtered views and files older than those tables need `rollup_hour`. So they read one
chart bucket at a time, grouped by the five filterable dimensions, and keep buckets that are
over. The most-expensive and slowest lists fall back to the same, from `requests`, where the
cost and duration indexes are missing or their walk is too slow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from itertools import zip_longest
from typing import Any

from datasette import hookimpl
from datasette.database import Database

logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# A bucket is kept this long after its end, because a request's row is written when it
# finishes. NOTE: a request that runs longer than this lands in a kept bucket too late.
SETTLE_MS = HOUR_MS
MAX_ENTRIES = 5000
# Dimension columns of each group, in the order of analytics_data.DIMENSIONS.
GROUP_COLUMNS = ("model", "provider", "route", "client", "status_class")
SUMMED = (
    "requests", "errors", "input_tokens", "output_tokens", "cached_input_tokens",
    "reasoning_tokens", "total_tokens", "cost_usd", "unpriced", "duration_ms_sum",
    "ttft_ms_sum", "ttft_count",
)
AGGREGATE = "meterway_hist_sum"
TOP_COLUMNS = ("id, started_ms, requested_model, router_model, routed_model, provider, "
               "status, outcome, duration_ms, total_tokens, cost_usd")

# (dimension tuple, sums in SUMMED order, latency histogram)
Group = tuple[tuple[str, ...], list[float], list[int]]
_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def sum_hists(hists: list[list[int]]) -> list[int]:
    """Add histograms bucket by bucket; shorter ones count as zeros past their end."""
    # zip_longest and sum run in C, several times faster than a loop per bucket in Python.
    return [sum(column) for column in zip_longest(*hists, fillvalue=0)]


class HistSum:
    """SQL aggregate that adds up `latency_hist` JSON arrays bucket by bucket."""

    def __init__(self) -> None:
        self.parts: list[list[int]] = []

    def step(self, value: str | None) -> None:
        if value:
            self.parts.append(json.loads(value))

    def finalize(self) -> str:
        return json.dumps(sum_hists(self.parts), separators=(",", ":"))


@hookimpl
def prepare_connection(conn: Any) -> None:
    """Register the histogram-summing aggregate on every Datasette connection."""
    conn.create_aggregate(AGGREGATE, 1, HistSum)


async def _cached(key: tuple[Any, ...], hi: int, now_ms: int, load: Any) -> Any:
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    value = await load()
    if hi + SETTLE_MS <= now_ms:
        _cache[key] = value
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return value


async def read_groups(db: Database, lo: int, hi: int,
                      filters: dict[str, str] | None = None) -> list[Group]:
    """Sum `rollup_hour` rows in [lo, hi) per dimension tuple, histograms included.

    `filters` maps `GROUP_COLUMNS` names to the only value to read, so the histogram
    aggregate, which parses JSON in Python, runs only on the matching rows.
    """
    columns = ", ".join(GROUP_COLUMNS)
    sums = ", ".join(f"sum({name})" for name in SUMMED)
    where = ["bucket_ms >= :lo", "bucket_ms < :hi"]
    params: dict[str, Any] = {"lo": lo, "hi": hi}
    for index, (column, value) in enumerate(sorted((filters or {}).items())):
        if column not in GROUP_COLUMNS:
            raise ValueError(f"cannot filter rollup_hour on {column!r}; use one of {GROUP_COLUMNS}")
        where.append(f"{column} = :filter{index}")
        params[f"filter{index}"] = value
    rows = await db.execute(
        f"SELECT {columns}, {sums}, {AGGREGATE}(latency_hist) FROM rollup_hour "
        f"WHERE {' AND '.join(where)} GROUP BY {columns}", params)
    width = len(GROUP_COLUMNS)
    return [(tuple(row[:width]), [v or 0 for v in row[width:-1]], json.loads(row[-1]))
            for row in rows]


def _pieces(start_ms: int, end_ms: int, buckets: list[int], bucket_ms: int,
            now_ms: int) -> list[tuple[int, int, int]]:
    """Cut [start_ms, end_ms) into (bucket, lo, hi) pieces that are worth keeping.

    A whole bucket that is over is one piece. A bucket cut by the range's edge, or not over
    yet, is cut into whole hours, so its finished hours are kept and reused as a moving
    range slides on, and only the current hour is read again.
    """
    pieces = []
    for bucket in buckets:
        lo, hi = max(bucket, start_ms), min(bucket + bucket_ms, end_ms)
        if lo >= hi:
            continue
        if (lo, hi) == (bucket, bucket + bucket_ms) and hi + SETTLE_MS <= now_ms:
            pieces.append((bucket, lo, hi))
            continue
        hour = lo // HOUR_MS * HOUR_MS
        while hour < hi:
            pieces.append((bucket, max(hour, lo), min(hour + HOUR_MS, hi)))
            hour += HOUR_MS
    return pieces


async def bucket_groups(db: Database, start_ms: int, end_ms: int, buckets: list[int],
                        bucket_ms: int, now_ms: int | None = None,
                        filters: dict[str, str] | None = None) -> list[tuple[int, list[Group]]]:
    """Return the groups of every bucket of the range, reading only pieces not kept yet.

    A bucket may appear in several (bucket, groups) pairs, one per piece; callers add them up.
    With `filters` (see `read_groups`) only matching groups are read and kept.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    found = []
    # One piece after the other: the histogram aggregate runs in Python and holds the GIL,
    # so parallel queries would only stretch each one towards Datasette's time limit.
    for bucket, lo, hi in _pieces(start_ms, end_ms, buckets, bucket_ms, now_ms):
        key = ("groups", str(db.path), lo, hi, tuple(sorted((filters or {}).items())))
        groups = await _cached(key, hi, now_ms,
                               lambda lo=lo, hi=hi: read_groups(db, lo, hi, filters))
        found.append((bucket, groups))
    return found


async def top_requests(db: Database, start_ms: int, end_ms: int, buckets: list[int],
                       bucket_ms: int, order: str, where: str, params: dict[str, Any],
                       limit: int, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Return the `limit` requests with the largest `order` value, one query per piece."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    sql = (f"SELECT {TOP_COLUMNS} FROM requests WHERE started_ms >= :lo AND started_ms < :hi "
           f"AND {where} AND {order} IS NOT NULL ORDER BY {order} DESC LIMIT {limit}")
    filters = tuple(sorted(params.items()))

    async def one(lo: int, hi: int) -> list[dict[str, Any]]:
        async def load() -> list[dict[str, Any]]:
            return [dict(row) for row in await db.execute(sql, {**params, "lo": lo, "hi": hi})]
        return await _cached(("top", str(db.path), lo, hi, order, filters), hi, now_ms, load)

    pieces = _pieces(start_ms, end_ms, buckets, bucket_ms, now_ms)
    found = await asyncio.gather(*(one(lo, hi) for _, lo, hi in pieces))
    rows = [row for part in found for row in part]
    return sorted(rows, key=lambda row: row[order], reverse=True)[:limit]
