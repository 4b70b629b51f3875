"""Export stored flows as `.mitm` files: one request's flow, or every row of a Logs view.

`payloads.flow` contains each flow as written by mitmproxy's `FlowWriter`; such blobs simply
concatenate into one valid `.mitm` file, which `mitmweb -r FILE` opens.
"""

from __future__ import annotations

import logging
from typing import Any

from datasette import hookimpl
from datasette.utils.asgi import Response

logger = logging.getLogger(__name__)

_CHUNK = 500  # ids per IN (...) query, below SQLite's variable limit


def _row_ids(columns: list[str], rows: list[Any]) -> list[str]:
    for key in ("id", "request_id"):
        if key in columns:
            index = columns.index(key)
            return [row[key] if isinstance(row, dict) else row[index] for row in rows]
    return []


async def load_flows(db: Any, ids: list[str]) -> bytes:
    """Concatenate the stored flows of these request ids, in their order, skipping missing ones."""
    found: dict[str, bytes] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = await db.execute(
            f"SELECT request_id, flow FROM payloads WHERE request_id IN ({marks}) "
            "AND flow IS NOT NULL", chunk)
        found.update({row[0]: bytes(row[1]) for row in rows})
    return b"".join(found[i] for i in ids if i in found)


def mitm_response(body: bytes, filename: str) -> Response:
    """Wrap flow bytes as a `.mitm` file download."""
    return Response(body, status=200, content_type="application/octet-stream",
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


async def _render(datasette: Any, columns: list[str], rows: list[Any], database: str,
                  table: str | None) -> Response:
    ids = [i for i in _row_ids(columns, rows) if i]
    db = datasette.get_database(database)
    body = await load_flows(db, ids)
    if not body:
        return Response.text(
            "None of these rows has a stored flow. Flows are kept in payloads.flow when the "
            "gateway stores payloads; select rows that have one.", status=404)
    logger.info("exporting %d flows from %s", len(ids), database)
    return mitm_response(body, f"{table or 'query'}.mitm")


def _can_render(datasette: Any, columns: list[str], database: str) -> bool:
    return bool({"id", "request_id"} & set(columns or []))


@hookimpl
def register_output_renderer(datasette: Any) -> dict[str, Any]:
    """Offer `.mitm` next to `.json` and `.csv` for any view with an `id` column."""
    return {"extension": "mitm", "render": _render, "can_render": _can_render}
