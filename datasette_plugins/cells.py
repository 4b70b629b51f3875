"""Render the Logs table's cells: status colours, durations, dollars, models and tokens."""

from __future__ import annotations

from typing import Any

from datasette import hookimpl
from markupsafe import Markup, escape

from .formatting import format_cost, format_count, format_duration

DURATION_COLUMNS = {"duration_ms", "ttft_ms", "router_ms"}
COST_COLUMNS = {"cost_usd", "cost_input_usd", "cost_output_usd", "cost_cache_read_usd",
                "cost_cache_write_usd"}


def _get(row: Any, column: str) -> Any:
    # The row lacks a column when the viewer hid it with `_col`/`_nocol`.
    try:
        return row[column]
    except (IndexError, KeyError):
        return None


def status_css_class(status: int | None) -> str:
    """Return the CSS class for an HTTP status: mw-status-2xx .. mw-status-5xx or -none."""
    if status is None or not 100 <= int(status) <= 599:
        return "mw-status-none"
    return f"mw-status-{int(status) // 100}xx"


def render_request_cell(row: Any, value: Any, column: str, request_url: str) -> Markup | None:
    """Render one `requests` cell as HTML, or return None to keep Datasette's rendering."""
    if column == "id" and value:
        return Markup('<a href="{}">{}</a>').format(request_url, value)
    if column == "status":
        shown = "–" if value is None else value
        return Markup('<span class="{}">{}</span>').format(status_css_class(value), shown)
    if column in DURATION_COLUMNS and value is not None:
        return Markup('<span title="{} ms">{}</span>').format(value, format_duration(value))
    if column in COST_COLUMNS:
        if value is None:
            return Markup('<span class="mw-muted" title="unpriced">–</span>')
        return Markup('<span title="{}">{}</span>').format(value, format_cost(value))
    if column == "requested_model" and value:
        routed = _get(row, "routed_model")
        if routed and routed != value:
            return Markup("{} → {}").format(value, routed)
        return None
    if column in ("input_tokens", "output_tokens") and value is not None:
        part, label = (("cached_input_tokens", "cached") if column == "input_tokens"
                       else ("reasoning_tokens", "reasoning"))
        extra = _get(row, part)
        if extra:
            return Markup('{} <span class="mw-muted">({} {})</span>').format(
                format_count(value), format_count(extra), label)
        return Markup("{}").format(format_count(value))
    if column == "total_tokens" and value is not None:
        return Markup("{}").format(format_count(value))
    return None


@hookimpl
def render_cell(row: Any, value: Any, column: str, table: str | None, database: str,
                datasette: Any) -> Markup | None:
    """Render the `requests` table's cells for people; leave every other table alone."""
    if table != "requests":
        return None
    url = datasette.urls.path(f"/-/meterway/request/{value}") if column == "id" else ""
    return render_request_cell(row, value, column, url)


def escape_text(value: Any) -> Markup:
    """Escape any value for HTML, so prompt text never becomes markup."""
    return escape("" if value is None else str(value))
