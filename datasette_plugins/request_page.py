"""The request page at /-/meterway/request/<id>, and its `.mitm` flow download."""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
from typing import Any

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Request, Response

from .cells import status_css_class
from .conversation import pretty_json, request_messages, response_messages
from .formatting import format_cost, format_count, format_duration
from .log_database import has_log_table, log_database
from .mitm_export import load_flows, mitm_response

if TYPE_CHECKING:  # datasette.app imports this package while it loads plugins
    from datasette.app import Datasette

_ID_PATTERN = r"(?P<id>[A-Za-z0-9_.:-]+?)"


def _parse(text: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {}


async def _load(datasette: Datasette, request_id: str) -> tuple[Any, dict, dict]:
    db = log_database(datasette)
    if db is None or not has_log_table(db):
        raise NotFound("No database with a request log is being served.")
    rows = await db.execute("SELECT * FROM requests WHERE id = ?", [request_id])
    row = rows.first()
    if row is None:
        raise NotFound(f"No logged request has id {request_id!r}; ids are in the Logs table.")
    payload: dict[str, Any] = {}
    if await db.table_exists("payloads"):
        found = (await db.execute(
            "SELECT client_request, upstream_request, response, request_bytes, response_bytes, "
            "truncated, body_flags, flow IS NOT NULL AS has_flow FROM payloads "
            "WHERE request_id = ?", [request_id])).first()
        payload = dict(found) if found else {}
    return db, dict(row), payload


def _parts(row: dict[str, Any]) -> list[tuple[str, str]]:
    tokens = [
        ("Input tokens", format_count(row.get("input_tokens"))),
        ("  cached (read)", format_count(row.get("cached_input_tokens"))),
        ("  cache write", format_count(row.get("cache_write_tokens"))),
        ("Output tokens", format_count(row.get("output_tokens"))),
        ("  reasoning", format_count(row.get("reasoning_tokens"))),
        ("Total tokens", format_count(row.get("total_tokens"))),
        ("Usage source", row.get("usage_source") or "–"),
    ]
    costs = [
        ("Cost", format_cost(row.get("cost_usd"))),
        ("  input", format_cost(row.get("cost_input_usd"))),
        ("  output", format_cost(row.get("cost_output_usd"))),
        ("  cache read", format_cost(row.get("cost_cache_read_usd"))),
        ("  cache write", format_cost(row.get("cost_cache_write_usd"))),
        ("Cost status", row.get("cost_status") or "–"),
        ("Price source", row.get("price_source") or "–"),
    ]
    return tokens + costs


def _routing(row: dict[str, Any]) -> list[tuple[str, str]]:
    chain = [row.get(k) for k in ("requested_model", "router_model", "routed_model",
                                  "response_model")]
    headers = _parse(row.get("router_headers"))
    outcome = row.get("router_outcome") or "–"
    if outcome in ("failed_open", "timeout_failed_open"):
        outcome += " (the router failed; the request went on unchanged)"
    return [
        ("Models", " → ".join(str(m) if m else "·" for m in chain)),
        ("", "requested → router → routed → response"),
        ("Router outcome", outcome),
        ("Router error", row.get("router_error") or "–"),
        ("Router latency", format_duration(row.get("router_ms"))),
        ("Router headers", ", ".join(f"{k}: {v}" for k, v in headers.items()) or "–"),
        ("Route", row.get("route") or "–"),
        ("Backend", row.get("backend") or "–"),
        ("Provider", row.get("provider") or "–"),
        ("Upstream", row.get("upstream") or "–"),
    ]


async def request_page(datasette: Datasette, request: Request) -> Response:
    """Render one logged request: payloads, conversation, usage, cost, timings and routing."""
    request_id = request.url_vars["id"]
    db, row, payload = await _load(datasette, request_id)
    client = _parse(payload.get("client_request"))
    upstream = _parse(payload.get("upstream_request"))
    response = _parse(payload.get("response"))
    context = {
        "row": row, "payload": payload, "db_name": db.name,
        "status_class": status_css_class(row.get("status")),
        "conversation": request_messages(client.get("body") or upstream.get("body")),
        "answer": response_messages(response.get("body")),
        "usage": _parts(row), "routing": _routing(row),
        "timings": [("Total", format_duration(row.get("duration_ms"))),
                    ("Time to first byte", format_duration(row.get("ttft_ms"))),
                    ("Router", format_duration(row.get("router_ms")))],
        "messages": [("Client sent", client), ("Gateway sent", upstream),
                     ("Provider returned", response)],
        "pretty_json": pretty_json,
        "raw_row": json.dumps(row, indent=2, ensure_ascii=False, default=str),
        "mitm_url": datasette.urls.path(f"/-/meterway/request/{request_id}.mitm"),
        "row_url": datasette.urls.table(db.name, "requests") + f"?id={request_id}",
    }
    html = await datasette.render_template("meterway_request.html", context, request=request)
    return Response.html(html)


async def flow_download(datasette: Datasette, request: Request) -> Response:
    """Send one request's stored flow as a `.mitm` file."""
    request_id = request.url_vars["id"]
    db, _, _ = await _load(datasette, request_id)
    body = await load_flows(db, [request_id])
    if not body:
        raise NotFound(f"Request {request_id!r} has no stored flow (payloads.flow is empty).")
    return mitm_response(body, f"{request_id}.mitm")


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    """Register the request page and its flow download."""
    return [
        (rf"^/-/meterway/request/{_ID_PATTERN}\.mitm$", flow_download),
        (rf"^/-/meterway/request/{_ID_PATTERN}$", request_page),
    ]
