"""Link the meterway pages from Datasette's menu, and style and script the Logs table."""

from __future__ import annotations

from typing import Any

from datasette import hookimpl

from .log_database import log_database

# Datasette names the static mount after the distribution that registered the package.
PLUGIN = "meterway"


@hookimpl
def menu_links(datasette: Any) -> list[dict[str, str]]:
    """Add Analytics and Logs to the navigation menu."""
    links = [{"href": datasette.urls.path("/-/meterway"), "label": "Analytics"}]
    db = log_database(datasette)
    if db is not None:
        links.append({"href": datasette.urls.table(db.name, "requests"), "label": "Logs"})
    return links


@hookimpl
def extra_css_urls(datasette: Any, table: str | None) -> list[str]:
    """Load the status colours on the Logs table page."""
    if table != "requests":
        return []
    return [datasette.urls.static_plugins(PLUGIN, "meterway.css")]


@hookimpl
def extra_js_urls(datasette: Any, table: str | None) -> list[dict[str, Any]]:
    """Load the follow-new-requests toggle on the Logs table page."""
    if table != "requests":
        return []
    return [{"url": datasette.urls.static_plugins(PLUGIN, "meterway.js")}]


@hookimpl
def table_actions(datasette: Any, database: str, table: str, request: Any) -> list[dict[str, str]]:
    """Offer Analytics and a `.mitm` export of the rows shown, in the Logs table's actions menu."""
    if table != "requests":
        return []
    query = request.query_string if request is not None else ""
    export = datasette.urls.table(database, table, format="mitm")
    return [
        {"href": datasette.urls.path("/-/meterway"), "label": "Open Analytics"},
        {"href": f"{export}?{query}" if query else export,
         "label": "Download these rows' flows (.mitm)"},
    ]
