"""Run the Analytics page's queries over `rollup_hour`, or `requests` for short ranges.

Both sources are read through one subquery that yields the same columns, so totals, series
and breakdowns use one SQL text. Only the most-expensive and slowest lists always read
`requests`, bounded by the `started_ms` range and a LIMIT.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from datasette.database import Database

from addons.store_rollup import percentile_from_hist

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
MEASURES = {"requests": "requests", "tokens": "total_tokens", "cost": "cost_usd"}
SUMMED = (
    "requests", "errors", "input_tokens", "output_tokens", "cached_input_tokens",
    "reasoning_tokens", "total_tokens", "cost_usd", "unpriced", "duration_ms_sum",
    "ttft_ms_sum", "ttft_count",
)
TOP_LIMIT = 10
MAX_GROUPS = 8  # Stacks beyond this many groups are merged into "(other)".

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
_ROLLUP_SOURCE = """
SELECT bucket_ms AS t, model, provider, route, client, status_class, outcome,
  requests, errors, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens,
  total_tokens, cost_usd, unpriced, duration_ms_sum, ttft_ms_sum, ttft_count, latency_hist
FROM rollup_hour WHERE bucket_ms >= :start AND bucket_ms < :end
"""


@dataclass
class Query:
    """What the page asks for: a range, a group-by, a measure and equality filters."""

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


def _where(query: Query, raw: bool) -> tuple[str, dict[str, Any]]:
    clauses, params = [], {}
    for name, value in query.filters.items():
        column, expr = DIMENSIONS[name]
        clauses.append(f"{expr if raw else column} = :f_{name}")
        params[f"f_{name}"] = value
    return (" AND ".join(clauses) or "1"), params


async def _bounds(db: Database) -> list[float]:
    # Finite upper bounds only: the last bucket (upper_ms NULL) counts everything above them.
    rows = await db.execute(
        "SELECT upper_ms FROM latency_buckets WHERE upper_ms IS NOT NULL ORDER BY idx")
    return [float(row[0]) for row in rows]


async def _series_rows(db: Database, query: Query, params: dict[str, Any]) -> list[Any]:
    source = _RAW_SOURCE if query.time_range.uses_raw_rows else _ROLLUP_SOURCE
    where, filter_params = _where(query, raw=False)
    group_column = DIMENSIONS[query.group][0]
    sums = ", ".join(f"sum({name}) AS {name}" for name in SUMMED)
    sql = (
        f"SELECT ((t + :offset_ms) / :bucket_ms) * :bucket_ms - :offset_ms AS bucket, "
        f"{group_column} AS grp, {sums} FROM ({source}) WHERE {where} GROUP BY bucket, grp"
    )
    return list(await db.execute(sql, {**params, **filter_params}))


async def _options(db: Database, query: Query, params: dict[str, Any]) -> dict[str, list[str]]:
    source = _RAW_SOURCE if query.time_range.uses_raw_rows else _ROLLUP_SOURCE
    columns = [column for column, _ in DIMENSIONS.values()]
    sql = f"SELECT DISTINCT {', '.join(columns)} FROM ({source})"
    found: dict[str, set[str]] = {name: set() for name in DIMENSIONS}
    for row in await db.execute(sql, params):
        for name, value in zip(DIMENSIONS, row):
            found[name].add(value)
    return {name: sorted(values) for name, values in found.items()}


async def _histograms(db: Database, query: Query, params: dict[str, Any]) -> dict[str, list[int]]:
    where, filter_params = _where(query, raw=False)
    if query.time_range.uses_raw_rows:
        # The bucket of a duration is the first one whose upper bound holds it.
        sql = (
            "SELECT model, coalesce((SELECT min(idx) FROM latency_buckets "
            "WHERE upper_ms >= duration_ms), (SELECT max(idx) FROM latency_buckets)) AS idx, "
            f"count(*) FROM ({_RAW_SOURCE}) WHERE {where} AND duration_ms IS NOT NULL "
            "GROUP BY model, idx"
        )
    else:
        sql = (
            "SELECT model, CAST(j.key AS INTEGER) AS idx, sum(j.value) "
            f"FROM ({_ROLLUP_SOURCE}) AS r, json_each(r.latency_hist) AS j "
            f"WHERE {where} GROUP BY model, idx"
        )
    size = len(await _bounds(db)) + 1
    hists: dict[str, list[int]] = defaultdict(lambda: [0] * size)
    for model, idx, count in await db.execute(sql, {**params, **filter_params}):
        if 0 <= idx < size:
            hists[model][idx] += int(count or 0)
    return dict(hists)


async def _top(db: Database, query: Query, params: dict[str, Any], order: str) -> list[dict]:
    where, filter_params = _where(query, raw=True)
    sql = (
        "SELECT id, started_ms, requested_model, router_model, routed_model, provider, "
        "status, outcome, duration_ms, total_tokens, cost_usd FROM requests "
        f"WHERE started_ms >= :start AND started_ms < :end AND {where} "
        f"AND {order} IS NOT NULL ORDER BY {order} DESC LIMIT {TOP_LIMIT}"
    )
    return [dict(row) for row in await db.execute(sql, {**params, **filter_params})]


def _percentiles(hist: list[int], bounds: list[float]) -> tuple[float | None, ...]:
    if not sum(hist):
        return (None, None, None)
    return tuple(percentile_from_hist(hist, q, bounds) for q in (0.5, 0.95, 0.99))


async def load_analytics(db: Database, query: Query) -> Analytics:
    """Run the page's queries concurrently and shape their results for the template."""
    tr = query.time_range
    params = {"start": tr.start_ms, "end": tr.end_ms,
              "offset_ms": tr.offset_minutes * 60_000, "bucket_ms": tr.bucket_ms}
    series_rows, options, hists, expensive, slowest, bounds = await asyncio.gather(
        _series_rows(db, query, params),
        _options(db, query, params),
        _histograms(db, query, params),
        _top(db, query, params, "cost_usd"),
        _top(db, query, params, "duration_ms"),
        _bounds(db),
    )

    buckets = tr.buckets()
    position = {bucket: index for index, bucket in enumerate(buckets)}
    totals = {name: 0.0 for name in SUMMED}
    per_group: dict[str, dict[str, float]] = defaultdict(lambda: {n: 0.0 for n in SUMMED})
    measure = MEASURES[query.measure]
    layer_values: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(buckets))
    errors = [[0.0, 0.0] for _ in buckets]
    for row in series_rows:
        index = position.get(row["bucket"])
        for name in SUMMED:
            value = row[name] or 0
            totals[name] += value
            per_group[row["grp"]][name] += value
        if index is None:
            continue
        layer_values[row["grp"]][index] += row[measure] or 0
        errors[index][0] += row["errors"] or 0
        errors[index][1] += row["requests"] or 0

    ranked = sorted(per_group, key=lambda g: per_group[g][measure], reverse=True)
    shown, rest = ranked[:MAX_GROUPS], ranked[MAX_GROUPS:]
    series = {name: layer_values[name] for name in shown}
    if rest:
        series["(other)"] = [sum(layer_values[g][i] for g in rest) for i in range(len(buckets))]
    breakdown = [{"name": name, **per_group[name]} for name in ranked]

    models = sorted(hists, key=lambda m: sum(hists[m]), reverse=True)[:12]
    latency = [(model, *_percentiles(hists[model], bounds)) for model in models]
    combined = [sum(column) for column in zip(*hists.values())] if hists else []
    p50, p95, p99 = _percentiles(combined, bounds) if combined else (None, None, None)

    return Analytics(
        totals=totals, buckets=buckets, series=series,
        errors_per_bucket=[(e, n) for e, n in errors], breakdown=breakdown,
        latency=latency, overall_latency={"p50": p50, "p95": p95, "p99": p99},
        options=options, most_expensive=expensive, slowest=slowest,
    )
