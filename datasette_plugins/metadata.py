"""Give the request log's tables their facets, sort order, search and canned queries.

Supplied through `get_metadata` so that a plain `datasette meterway.db` gets them too. A
metadata file passed with `-m` overrides any of these keys.
"""

from __future__ import annotations

from typing import Any

from datasette import hookimpl

from .log_database import has_log_table

FACETS = ["status", "outcome", "requested_model", "routed_model", "provider", "route",
          "client", "stream", "is_replay"]

_NOW_MS = "CAST(strftime('%s', 'now') AS INTEGER) * 1000"

CANNED_QUERIES = {
    "cost_by_model_per_day": {
        "title": "Cost by model per day, last 30 days (UTC)",
        # Grouping on the integer day before formatting it keeps a month of summary rows
        # under Datasette's 1 s query limit.
        "sql": (
            "SELECT date(day * 86400, 'unixepoch') AS day, model, requests, tokens,\n"
            "  round(cost_usd, 6) AS cost_usd, unpriced_requests\n"
            "FROM (SELECT bucket_ms / 86400000 AS day, model, sum(requests) AS requests,\n"
            "    sum(total_tokens) AS tokens, sum(cost_usd) AS cost_usd,\n"
            "    sum(unpriced) AS unpriced_requests\n"
            f"  FROM rollup_hour WHERE bucket_ms >= {_NOW_MS} - 30 * 86400000\n"
            "  GROUP BY day, model)\n"
            "ORDER BY day DESC, cost_usd DESC"
        ),
    },
    "errors_last_24h": {
        "title": "Errors in the last 24 hours",
        "sql": (
            "SELECT id, started_at, status, outcome, error, route, provider, requested_model,\n"
            "  routed_model, duration_ms\n"
            f"FROM requests WHERE started_ms >= {_NOW_MS} - 86400000\n"
            "  AND coalesce(outcome, '') <> 'ok'\n"
            "ORDER BY started_ms DESC LIMIT 1000"
        ),
    },
    "failed_open": {
        "title": "Requests that failed open (the router failed and the request went on)",
        "sql": (
            "SELECT id, started_at, router_outcome, router_ms, route, requested_model,\n"
            "  routed_model, status, error\n"
            "FROM requests WHERE router_outcome IN ('failed_open', 'timeout_failed_open')\n"
            "ORDER BY started_ms DESC LIMIT 1000"
        ),
    },
    "unpriced_models": {
        "title": "Unpriced models (cost unknown, counted as NULL)",
        "sql": (
            "SELECT provider, model, sum(unpriced) AS unpriced_requests,\n"
            "  sum(total_tokens) AS tokens, datetime(min(bucket_ms) / 1000, 'unixepoch') AS first_hour,\n"
            "  datetime(max(bucket_ms) / 1000, 'unixepoch') AS last_hour\n"
            "FROM rollup_hour WHERE unpriced > 0\n"
            "GROUP BY provider, model ORDER BY unpriced_requests DESC"
        ),
    },
}


def log_metadata() -> dict[str, Any]:
    """Build the metadata of one database that contains the request log (a fresh dict each call)."""
    return {
        "tables": {
            "requests": {
                "title": "Logs",
                "facets": list(FACETS),
                "sort_desc": "started_ms",
                "fts_table": "requests_fts",
                "fts_pk": "rowid",
            },
        },
        "queries": {name: dict(query) for name, query in CANNED_QUERIES.items()},
    }


@hookimpl
def get_metadata(datasette: Any, key: str, database: str | None, table: str | None) -> dict:
    """Add the log metadata for every served database that has a `requests` table."""
    databases = {}
    for name, db in datasette.databases.items():
        if name != "_internal" and not db.is_memory and has_log_table(db):
            databases[name] = log_metadata()
    return {"databases": databases} if databases else {}
