"""The Analytics page at /-/meterway, the landing page that `/` redirects to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
from typing import Any
from urllib.parse import urlencode

from datasette import hookimpl
from datasette.database import QueryInterrupted
from datasette.utils.asgi import Request, Response

from . import svg_charts
from .analytics_data import DIMENSIONS, MEASURES, Query, load_analytics
from .formatting import (
    format_compact, format_cost, format_count, format_duration, format_local_time,
    format_offset, format_percent,
)
from .log_database import has_log_table, log_database
from .time_range import DAY_MS, HOUR_MS, PRESETS, RangeError, TimeRange, parse_range

if TYPE_CHECKING:  # datasette.app imports this package while it loads plugins
    from datasette.app import Datasette

logger = logging.getLogger(__name__)

MEASURE_LABELS = {"requests": "Requests", "tokens": "Tokens", "cost": "Cost"}
MEASURE_FORMAT = {"requests": format_compact, "tokens": format_compact,
                  "cost": lambda v: format_cost(v) if v < 1 else f"${v:,.2f}"}
GROUP_LABELS = {"model": "Model", "provider": "Provider", "route": "Route",
                "client": "Client", "status": "Status"}


def _query_from(args: dict[str, str]) -> tuple[Query | None, str | None]:
    try:
        time_range = parse_range(args)
    except RangeError as error:
        return None, str(error)
    group = args.get("group") if args.get("group") in DIMENSIONS else "model"
    measure = args.get("measure") if args.get("measure") in MEASURES else "requests"
    filters = {name: args[name] for name in DIMENSIONS if args.get(name) is not None
               and args.get(name) != "*"}
    return Query(time_range, group, measure, filters), None


def _bucket_label(time_range: TimeRange, bucket: int) -> str:
    # Times alone for ranges within a day, dates alone for daily buckets, both otherwise.
    span = time_range.end_ms - time_range.start_ms
    with_date = time_range.bucket_ms >= 6 * HOUR_MS or span > DAY_MS
    label = format_local_time(bucket, time_range.offset_minutes, with_date=with_date)
    return label[:10] if time_range.bucket_ms >= DAY_MS else label


def _link(base: dict[str, str], **changes: str | None) -> str:
    merged = {**base, **changes}
    return "?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def _charts(data: Any, query: Query) -> dict[str, Any]:
    tr = query.time_range
    labels = [_bucket_label(tr, b) for b in data.buckets]
    fmt = MEASURE_FORMAT[query.measure]
    status = query.group == "status"
    layers = [svg_charts.Series(name or "(none)", values, svg_charts.colour_for(i, name, status))
              for i, (name, values) in enumerate(data.series.items())]
    column = MEASURES[query.measure]
    breakdown_rows = [
        (row["name"] or "(none)", row[column],
         format_cost(row[column]) if query.measure == "cost" else format_count(row[column]))
        for row in data.breakdown[:15]
    ]
    rates = [(errors / count) if count else None for errors, count in data.errors_per_bucket]
    return {
        "traffic": svg_charts.stacked_bars(labels, layers, fmt,
                                           f"{MEASURE_LABELS[query.measure]} over time"),
        "legend": layers,
        "breakdown": svg_charts.horizontal_bars(
            breakdown_rows, f"{MEASURE_LABELS[query.measure]} by {query.group}", status),
        "latency": svg_charts.latency_ranges(data.latency, format_duration),
        "errors": svg_charts.error_rate_line(labels, rates),
    }


def _totals(data: Any) -> list[tuple[str, str, str]]:
    t = data.totals
    requests = t["requests"]
    unpriced = f"{format_count(t['unpriced'])} unpriced" if t["unpriced"] else "all priced"
    return [
        ("Calls", format_count(requests),
         f"{format_count(t['errors'])} {'error' if t['errors'] == 1 else 'errors'}"),
        ("Tokens", format_count(t["total_tokens"]),
         f"{format_compact(t['input_tokens'])} in · {format_compact(t['output_tokens'])} out"),
        ("Cost", format_cost(t["cost_usd"]), unpriced),
        ("Error rate", format_percent(t["errors"] / requests if requests else None),
         "outcome other than ok"),
        ("p50 latency", format_duration(data.overall_latency["p50"]), "approximate"),
        ("p95 latency", format_duration(data.overall_latency["p95"]), "approximate"),
    ]


async def analytics(datasette: Datasette, request: Request) -> Response:
    """Render the Analytics page for the range, group, measure and filters in the query string."""
    args = {key: request.args.get(key) for key in request.args}
    db = log_database(datasette)
    query, problem = _query_from(args)
    context: dict[str, Any] = {
        "args": args, "problem": problem, "presets": list(PRESETS),
        "groups": GROUP_LABELS, "measures": MEASURE_LABELS, "db_name": db.name if db else None,
        "link": lambda **changes: _link(args, **changes), "query": query,
    }
    status = 400 if problem else 200

    if db is None or not has_log_table(db):
        context["empty"] = "no_log"
    elif query is not None:
        tr = query.time_range
        context.update({
            "range_from": format_local_time(tr.start_ms, tr.offset_minutes),
            "range_to": format_local_time(tr.end_ms, tr.offset_minutes),
            "offset": format_offset(tr.offset_minutes),
            "raw": tr.uses_raw_rows,
        })
        try:
            data = await load_analytics(db, query)
        except QueryInterrupted as error:
            logger.warning("Analytics query exceeded the time limit: %s", error)
            context["problem"] = ("A query took longer than Datasette's time limit; "
                                  "choose a shorter range or add a filter.")
            status = 504
        else:
            context.update({"data": data, "totals": _totals(data), "charts": _charts(data, query),
                            "format_cost": format_cost, "format_duration": format_duration,
                            "format_count": format_count,
                            "local_time": lambda ms: format_local_time(ms, tr.offset_minutes)})
            if not data.totals["requests"]:
                context["empty"] = "no_rows_in_range"
    html = await datasette.render_template("meterway_analytics.html", context, request=request)
    return Response.html(html, status=status)


async def redirect_home(datasette: Datasette) -> Response:
    """Send `/` to the Analytics page."""
    return Response.redirect(datasette.urls.path("/-/meterway"))


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    """Register the Analytics page and the landing redirect."""
    return [(r"^/-/meterway/?$", analytics), (r"^/$", redirect_home)]
