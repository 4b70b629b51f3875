"""Turning a finished flow and its record into a `requests` row and a `payloads` row."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http
from mitmproxy.io import tnetstring
from mitmproxy.net.http.url import unparse as unparse_url

from addons import record as flowrecord
from addons.auth import CREDENTIAL_HEADER_BYTES, CREDENTIAL_HEADERS, CREDENTIAL_QUERY, REDACTED
from addons.bodies import body_text, cap_body, decode_body
from addons.redact import Redactor


def _redacted_headers(headers: http.Headers) -> list[list[str]]:
    pairs = []
    for name, value in headers.items(multi=True):
        if name.lower() in CREDENTIAL_HEADERS:
            value = REDACTED
        pairs.append([name, value])
    return pairs


def _redacted_url(request: http.Request) -> str:
    url = request.pretty_url
    if not any(name in request.query for name in CREDENTIAL_QUERY):
        return url
    copy = request.copy()
    for name in CREDENTIAL_QUERY:
        if name in copy.query:
            copy.query[name] = REDACTED
    return copy.pretty_url


class StoredBody:
    """A message body decoded, capped and redacted for storage."""

    def __init__(self, raw: bytes | None, content_encoding: str | None, max_bytes: int,
                 redactor: Redactor, *, already_decoded: bool = False) -> None:
        raw = raw or b""
        self.original_size = len(raw)
        flags: list[str] = []
        if already_decoded or not content_encoding:
            decoded = raw
        else:
            decoded, flags = decode_body(raw, content_encoding)
        capped, self.truncated = cap_body(decoded, max_bytes)
        text, text_flags = body_text(capped)
        self.flags = flags + [f for f in text_flags if not (self.truncated and f == "not_utf8")]
        self.text = redactor.text(text) or ""
        self.decoded = decoded


def request_json(request: http.Request, max_bytes: int, redactor: Redactor) -> tuple[str, StoredBody]:
    """Describe a request as the stored JSON text."""
    body = StoredBody(request.raw_content, request.headers.get("content-encoding"), max_bytes, redactor)
    text = json.dumps({
        "method": request.method,
        "url": redactor.text(_redacted_url(request)),
        "headers": _redacted_headers(request.headers),
        "body": body.text,
    }, ensure_ascii=False)
    return text, body


def _text(value: bytes | str) -> str:
    # Request state keeps host as str and the other fields as bytes.
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def request_state_json(state: dict[str, Any], max_bytes: int, redactor: Redactor) -> tuple[str, StoredBody]:
    """Describe a request kept as `Request.get_state()` as the stored JSON text.

    Reads the state dict directly: rebuilding a Request from it type-checks every field and
    cost more per request than the rest of this. Credentials in it were redacted on arrival.
    """
    headers = [[_text(name), _text(value)] for name, value in state["headers"]]
    encoding = next((value for name, value in headers if name.lower() == "content-encoding"), None)
    body = StoredBody(state.get("content"), encoding, max_bytes, redactor)
    url = unparse_url(_text(state["scheme"]), _text(state["host"]), state["port"], _text(state["path"]))
    text = json.dumps({
        "method": _text(state["method"]),
        "url": redactor.text(url),
        "headers": [[name, REDACTED if name.lower() in CREDENTIAL_HEADERS else value] for name, value in headers],
        "body": body.text,
    }, ensure_ascii=False)
    return text, body


def response_json(response: http.Response, body: StoredBody) -> str:
    """Describe a response as the stored JSON text."""
    return json.dumps({
        "status": response.status_code,
        "headers": _redacted_headers(response.headers),
        "body": body.text,
    }, ensure_ascii=False)


def _redacted_header_state(fields: Any) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(
        (name, REDACTED.encode()) if name.lower() in CREDENTIAL_HEADER_BYTES else (name, value)
        for name, value in fields
    )


def flow_states(flow: http.HTTPFlow, client_state: dict[str, Any] | None,
                response_body: bytes | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Return the flow in the client's form, the request as sent upstream, and the response.

    The first is for `flow_file`, with credential headers redacted; the other two are the
    request and response states as they were. One `get_state()` call serves all three, instead
    of `flow.copy()` plus `FlowWriter`, which took three times as long per request (measured
    with bench/profiled.py). Credentials in a query string were already redacted when the
    request arrived, before the client snapshot.
    """
    # get_state() deep-copies the metadata, which contains the client snapshot too. The file
    # keeps only the record, so only the record is copied.
    metadata = flow.metadata
    flow.metadata = {flowrecord.RECORD_KEY: dict(flowrecord.get(flow) or {})}
    try:
        state = flow.get_state()
    finally:
        flow.metadata = metadata
    state["backup"] = None
    upstream_request = state["request"]
    received = state.get("response")
    if client_state is not None:
        state["request"] = dict(client_state)
    else:
        state["request"] = dict(upstream_request)
    state["request"]["headers"] = _redacted_header_state(state["request"]["headers"])
    if received is not None:
        response = state["response"] = dict(received)
        headers = response["headers"]
        if response.get("content") is None and response_body is not None:
            headers = tuple((n, v) for n, v in headers if n.lower() != b"content-encoding")
            response["content"] = response_body
        response["headers"] = _redacted_header_state(headers)
    return state, upstream_request, received


def flow_file(state: dict[str, Any], redactor: Redactor) -> bytes:
    """Serialise the first state of `flow_states` as mitmproxy's flow file format, redacted."""
    data = tnetstring.dumps(state)
    if redactor.bytes(data) == data:
        return data
    # Replacing inside the serialised bytes would break tnetstring's length prefixes and
    # leave a file mitmproxy cannot read, so a file with a secret is built again from
    # redacted values.
    return tnetstring.dumps(_redacted_value(state, redactor))


def _redacted_value(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, bytes):
        return redactor.bytes(value)
    if isinstance(value, dict):
        return {key: _redacted_value(item, redactor) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted_value(item, redactor) for item in value)
    return value


def flow_blob(flow: http.HTTPFlow, client_state: dict[str, Any] | None, response_body: bytes | None,
              redactor: Redactor) -> bytes:
    """Serialise the flow in the client's form, redacted, as mitmproxy's flow file format."""
    return flow_file(flow_states(flow, client_state, response_body)[0], redactor)


ROW_KEYS = (
    "id", "started_at", "started_ms", "bind", "route", "backend", "provider", "upstream", "api",
    "client", "user_agent", "stream", "requested_model", "router_model", "routed_model",
    "router_outcome", "router_ms", "router_headers", "router_error", "outcome", "error",
    "is_replay", "replay_of", "trace_id",
)


def base_row(rec: dict[str, Any]) -> dict[str, Any]:
    """Copy the record's column keys into a new row."""
    row = {key: rec.get(key) for key in ROW_KEYS}
    if isinstance(row["router_headers"], dict):
        row["router_headers"] = json.dumps(row["router_headers"], sort_keys=True)
    return row
