"""Compute what the Analytics page shows, from the summary tables or, for short ranges, `requests`.

Every source is reduced to the same shape (sums per chart bucket and group value, the values
of each filter menu, a latency histogram per model), so totals, series, breakdowns and
percentiles come from one Python pass. Unfiltered long ranges read the narrow summary tables
(`narrow_reads.py`). Filtered ones need the full dimension tuples of `rollup_hour`, so they
read its matching rows one bucket at a time through the cache in `range_cache.py`. The
most-expensive and slowest lists read `requests` by walking the cost and duration indexes
for long ranges, else one bucket at a time, bounded by the `started_ms` index and a LIMIT.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from datasette.database import Database, QueryInterrupted

from addons.store_rollup import percentile_from_hist

from . import narrow_reads
from .range_cache import SUMMED, TOP_COLUMNS, Group, bucket_groups, sum_hists, top_requests
from .time_range import TimeRange

# Group-by name -> (summary column, the same value computed from a `requests` row).
DIMENSIONS: dict[str, tuple[str, str]] = {
    "model": ("model", "coalesce(nullif(routed_model, ''), requested_model, '')"),
    "provider": ("provider", "coalesce(provider, '')"),
    "route": ("route", "coalesce(route, '')"),
    "client": ("client", "coalesce(client, '')"),
    "status": (
        "status_class",
        "CASE WHEN status BETWEEN 100 AND 599 THEN (status / 100) || 'xx' ELSE 'none' END",
    ),
}
logger = logging.getLogger(__name__)

MEASURES = {"requests": "requests", "tokens": "total_tokens", "cost": "cost_usd"}
TOP_LIMIT = 10
MAX_GROUPS = 8  # Stacks beyond this many groups are merged into "(other)".
# A filtered top list walks its index for at most this long before reading bucket by bucket.
FILTERED_WALK_LIMIT_MS = 250

_RAW_SOURCE = f"""
SELECT started_ms AS t,
  {', '.join(f'{expr} AS {col}' for col, expr in DIMENSIONS.values())},
  coalesce(outcome, '') AS outcome,
  1 AS requests, coalesce(outcome, '') <> 'ok' AS errors,
  input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, total_tokens,
  cost_usd, cost_status = 'unpriced' AS unpriced, duration_ms AS duration_ms_sum,
  ttft_ms AS ttft_ms_sum, ttft_ms IS NOT NULL AS ttft_count, duration_ms
FROM requests WHERE started_ms >= :start AND started_ms < :end
"""


@dataclass
class Query:
    """The page's request: a range, a group-by, a measure and equality filters."""

    time_range: TimeRange
    group: str = "model"
    measure: str = "requests"
    filters: dict[str, str] = field(default_factory=dict)


@dataclass
class Analytics:
    """Everything the Analytics page shows for one query."""

    totals: dict[str, float]
    buckets: list[int]
    series: dict[str, list[float]]
    errors_per_bucket: list[tuple[float, float]]
    breakdown: list[dict[str, Any]]
    latency: list[tuple[str, float | None, float | None, float | None]]
    overall_latency: dict[str, float | None]
    options: dict[str, list[str]]
    most_expensive: list[dict[str, Any]]
    slowest: list[dict[str, Any]]


def _where(query: Query) -> tuple[str, dict[str, Any]]:
    clauses, params = [], {}
    for name, value in sorted(query.filters.items()):
        clauses.append(f"{DIMENSIONS[name][1]} = :f_{name}")
        params[f"f_{name}"] = value
    return (" AND ".join(clauses) or "1"), params


async def _bounds(db: Database) -> list[float]:
    # Finite upper bounds only: the last bucket (upper_ms NULL) counts everything above them.
    rows = await db.execute(
        "SELECT upper_ms FROM latency_buckets WHERE upper_ms IS NOT NULL ORDER BY idx")
    return [float(row[0]) for row in rows]


async def _raw_bucket_groups(db: Database, tr: TimeRange, size: int) -> list[tuple[int, list[Group]]]:
    """Build the same per-bucket groups as the summary cache, straight from `requests`."""
    columns = ", ".join(column for column, _ in DIMENSIONS.values())
    sums = ", ".join(f"sum({name})" for name in SUMMED)
    # A duration goes in the first bucket whose upper bound is at least it, as in the writer.
    sql = (
        f"SELECT ((t + :offset_ms) / :bucket_ms) * :bucket_ms - :offset_ms AS bucket, {columns}, "
        "coalesce((SELECT min(idx) FROM latency_buckets WHERE upper_ms >= duration_ms), "
        "(SELECT max(idx) FROM latency_buckets)) AS idx, "
        f"sum(duration_ms IS NOT NULL), {sums} FROM ({_RAW_SOURCE}) "
        f"GROUP BY bucket, {columns}, idx"
    )
    params = {"start": tr.start_ms, "end": tr.end_ms, "offset_ms": tr.offset_minutes * 60_000,
              "bucket_ms": tr.bucket_ms}
    found: dict[tuple[int, tuple[str, ...]], tuple[list[float], list[int]]] = {}
    for row in await db.execute(sql, params):
        key = (row[0], tuple(row[1:6]))
        sums_so_far, hist = found.setdefault(key, ([0.0] * len(SUMMED), [0] * size))
        for index, value in enumerate(row[8:]):
            sums_so_far[index] += value or 0
        if row[6] is not None and 0 <= row[6] < size:
            hist[row[6]] += int(row[7] or 0)
    per_bucket: dict[int, list[Group]] = defaultdict(list)
    for (bucket, dims), (sums_so_far, hist) in found.items():
        per_bucket[bucket].append((dims, sums_so_far, hist))
    return sorted(per_bucket.items())


def _matches(dims: tuple[str, ...], filters: dict[str, str]) -> bool:
    return all(dims[index] == filters[name] for index, name in enumerate(DIMENSIONS)
               if name in filters)


def _percentiles(hist: list[int], bounds: list[float]) -> tuple[float | None, ...]:
    if not sum(hist):
        return (None, None, None)
    return tuple(percentile_from_hist(hist, q, bounds) for q in (0.5, 0.95, 0.99))


@dataclass
class _Collected:
    """Sums per (chart bucket, group value), filter menu values and per-model histograms."""

    rows: list[tuple[int, str, list[float]]] = field(default_factory=list)
    options: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in DIMENSIONS})
    hists: dict[str, list[int]] = field(default_factory=dict)


def _collect_groups(bucket_list: list[tuple[int, list[Group]]], query: Query) -> _Collected:
    """Apply the filters to full dimension tuples from `rollup_hour` or `requests`."""
    collected = _Collected()
    group_index = list(DIMENSIONS).index(query.group)
    hist_parts: dict[str, list[list[int]]] = defaultdict(list)
    for bucket, groups in bucket_list:
        for dims, sums, hist in groups:
            # The filter menus list every value in the range, so they ignore the filters.
            for name, value in zip(DIMENSIONS, dims):
                collected.options[name].add(value)
            if _matches(dims, query.filters):
                collected.rows.append((bucket, dims[group_index], sums))
                hist_parts[dims[0]].append(hist)
    collected.hists = {model: sum_hists(parts) for model, parts in hist_parts.items()}
    return collected


async def _collect_narrow(db: Database, tr: TimeRange, query: Query) -> _Collected:
    """Read an unfiltered view from the narrow summary tables."""
    collected = _Collected()
    collected.rows = await narrow_reads.dimension_sums(db, tr, DIMENSIONS[query.group][0], SUMMED)
    values = await narrow_reads.dimension_values(db, tr.start_ms, tr.end_ms)
    for name, (column, _) in DIMENSIONS.items():
        collected.options[name] = values.get(column, set())
    latency = await narrow_reads.model_latency(db, tr.start_ms, tr.end_ms)
    # Models without a single duration still get a (blank) latency row, as from rollup_hour.
    collected.hists = {model: latency.get(model, []) for model in collected.options["model"]}
    collected.hists.update(latency)
    return collected


async def _collect_filtered(db: Database, tr: TimeRange, query: Query) -> _Collected:
    """Read a filtered view: matching `rollup_hour` groups, and the menus from the narrow table."""
    filters = {DIMENSIONS[name][0]: value for name, value in query.filters.items()}
    bucket_list = await bucket_groups(db, tr.start_ms, tr.end_ms, tr.buckets(), tr.bucket_ms,
                                      filters=filters)
    collected = _collect_groups(bucket_list, query)
    values = await narrow_reads.dimension_values(db, tr.start_ms, tr.end_ms)
    collected.options = {name: values.get(column, set()) for name, (column, _) in DIMENSIONS.items()}
    return collected


async def _top_lists(db: Database, query: Query, narrow: bool,
                     any_rows: bool) -> list[list[dict[str, Any]]]:
    """Read the most expensive and the slowest requests of the range.

    With the cost and duration indexes (`narrow` true for an unfiltered view, or a filtered
    one on a file that has them), the lists walk those indexes. The walk visits many entries
    when few requests in the range match, for example when a filter leaves no priced ones,
    so a filtered walk gets a short time limit. An interrupted walk falls back to reading the
    range bucket by bucket, which the `started_ms` index bounds.
    """
    tr = query.time_range
    if not any_rows:
        # Walking an index for a range without requests would visit every entry.
        return [[], []]
    where, params = _where(query)
    time_limit = FILTERED_WALK_LIMIT_MS if query.filters else None
    found: list[list[dict[str, Any]]] = []
    for order in ("cost_usd", "duration_ms"):
        rows = None
        if narrow:
            try:
                rows = await narrow_reads.top_by_index(db, tr.start_ms, tr.end_ms, order, TOP_COLUMNS,
                                                       TOP_LIMIT, where, params, time_limit)
            except QueryInterrupted:
                logger.info("top %s list: index walk over %d..%d hit the time limit; reading "
                            "bucket by bucket", order, tr.start_ms, tr.end_ms)
        if rows is None:
            if tr.uses_raw_rows:
                top_buckets, top_width = [tr.start_ms], tr.end_ms - tr.start_ms
            else:
                top_buckets, top_width = tr.buckets(), tr.bucket_ms
            rows = await top_requests(db, tr.start_ms, tr.end_ms, top_buckets, top_width, order,
                                      where, params, TOP_LIMIT)
        found.append(rows)
    return found


async def load_analytics(db: Database, query: Query) -> Analytics:
    """Read the range's sums, histograms and top requests, and shape them for the template.

    Ranges up to 3 h read `requests`. Longer ranges on a file with the narrow summary tables
    read those when no filter is set, else the matching `rollup_hour` rows through the
    bucket cache. An older file's long ranges read every `rollup_hour` row, also cached.
    """
    tr = query.time_range
    bounds = await _bounds(db)
    narrow = not tr.uses_raw_rows and await narrow_reads.has_narrow_tables(db)
    if narrow and not query.filters:
        collected = await _collect_narrow(db, tr, query)
    elif narrow:
        collected = await _collect_filtered(db, tr, query)
    elif tr.uses_raw_rows:
        collected = _collect_groups(await _raw_bucket_groups(db, tr, len(bounds) + 1), query)
    else:
        collected = _collect_groups(
            await bucket_groups(db, tr.start_ms, tr.end_ms, tr.buckets(), tr.bucket_ms), query)
    any_rows = any(sums[SUMMED.index("requests")] for _, _, sums in collected.rows)
    expensive, slowest = await _top_lists(db, query, narrow, any_rows)

    buckets = tr.buckets()
    position = {bucket: index for index, bucket in enumerate(buckets)}
    measure = SUMMED.index(MEASURES[query.measure])
    requests_at, errors_at = SUMMED.index("requests"), SUMMED.index("errors")
    totals = [0.0] * len(SUMMED)
    per_group: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(SUMMED))
    layer_values: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(buckets))
    errors = [[0.0, 0.0] for _ in buckets]

    for bucket, name, sums in collected.rows:
        index = position.get(bucket)
        group_sums = per_group[name]
        for i, value in enumerate(sums):
            totals[i] += value
            group_sums[i] += value
        if index is not None:
            layer_values[name][index] += sums[measure]
            errors[index][0] += sums[errors_at]
            errors[index][1] += sums[requests_at]

    ranked = sorted(per_group, key=lambda g: per_group[g][measure], reverse=True)
    shown, rest = ranked[:MAX_GROUPS], ranked[MAX_GROUPS:]
    series = {name: layer_values[name] for name in shown}
    if rest:
        series["(other)"] = [sum(layer_values[g][i] for g in rest) for i in range(len(buckets))]
    breakdown = [{"name": name, **dict(zip(SUMMED, per_group[name]))} for name in ranked]

    hists = collected.hists
    models = sorted(hists, key=lambda m: sum(hists[m]), reverse=True)[:12]
    latency = [(model, *_percentiles(hists[model], bounds)) for model in models]
    p50, p95, p99 = _percentiles(sum_hists(list(hists.values())), bounds)

    return Analytics(
        totals=dict(zip(SUMMED, totals)), buckets=buckets, series=series,
        errors_per_bucket=[(e, n) for e, n in errors], breakdown=breakdown,
        latency=latency, overall_latency={"p50": p50, "p95": p95, "p99": p99},
        options={name: sorted(values) for name, values in collected.options.items()},
        most_expensive=expensive, slowest=slowest,
    )
