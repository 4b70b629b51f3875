"""The `payloads` row and full-text pair of one flow, built in the log writer process.

Costlog hands the writer a `PayloadSource`: state dicts the flow already had, the bytes kept
from a stream, and the reply text. Decoding bodies, cutting them to size, redacting and
writing the JSON texts and the flow file then runs in the writer process, on another core,
instead of on the gateway's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from addons.bodies import strict_json
from addons.logrow import StoredBody, flow_file, request_json, request_state_json, response_json
from addons.redact import Redactor
from addons.usage_text import request_text


@dataclass
class PayloadSource:
    """Inputs for one flow's payload, as plain values so that it pickles."""

    flow_state: dict[str, Any]  # the flow in the client's form, from `logrow.flow_states`
    client_snapshot: bool  # True when flow_state's request is the snapshot taken on arrival
    upstream_request: dict[str, Any] | None  # the request state as sent upstream, None without a backend
    response: dict[str, Any] | None  # the response state as received (no content when streamed)
    streamed: bytes | None  # what the stream tap kept of a streamed response, decoded
    streamed_size: int
    streamed_truncated: bool
    reply_text: str  # the reply text the usage tracker collected, for the full-text index
    max_bytes: int


def build_payload(source: PayloadSource, redactor: Redactor) -> tuple[dict[str, Any], tuple[str, str]]:
    """Return the `payloads` columns and the (prompt, answer) full-text pair of one flow."""
    max_bytes = source.max_bytes
    client = source.flow_state["request"]
    if source.client_snapshot:
        client_text, client_body = request_state_json(client, max_bytes, redactor)
    else:  # rejected before the snapshot: the live request is still as the client sent it
        client_text, client_body = request_json(http.Request.from_state(client), max_bytes, redactor)
    upstream_text = None
    if source.upstream_request is not None:
        upstream_text, _ = request_json(http.Request.from_state(source.upstream_request), max_bytes, redactor)

    response_text = None
    response_body: StoredBody | None = None
    if source.response is not None:
        response = http.Response.from_state(source.response)
        if source.streamed is not None:
            response_body = StoredBody(source.streamed, None, max_bytes, redactor, already_decoded=True)
            response_body.original_size = source.streamed_size
            response_body.truncated = source.streamed_truncated
        else:
            response_body = StoredBody(response.raw_content, response.headers.get("content-encoding"),
                                       max_bytes, redactor)
        response_text = response_json(response, response_body)

    payload = {
        "client_request": client_text,
        "upstream_request": upstream_text,
        "response": response_text,
        "request_bytes": client_body.original_size,
        "response_bytes": response_body.original_size if response_body else None,
        "truncated": int(client_body.truncated or bool(response_body and response_body.truncated)),
        "body_flags": sorted(set(client_body.flags + (response_body.flags if response_body else []))) or None,
        "flow": flow_file(source.flow_state, redactor),
    }
    return payload, (request_text(strict_json(client_body.decoded)), source.reply_text)
