"""Errors the gateway answers itself, as JSON in the client's API format.

mitmproxy writes its own HTML page when the upstream cannot be reached and offers no hook to
replace it. `install_json_error_pages()` swaps the HTTP/1 error-response function of
mitmproxy 12.3 for one that writes an OpenAI-style JSON error; the gateway checks the
function's signature at start so a mitmproxy upgrade fails loudly instead of silently
serving HTML. HTTP/2 clients still get mitmproxy's own error page.

mitmproxy passes the page function only a status and its own message. The gateway's error
hook calls `note_failed_flow(record)` first, and the page reads that record: mitmproxy 12.3
runs a flow's error hook and then writes the error page in the same asyncio task, so a
context variable carries the record from one to the other without leaking to other flows.
That is how a flow the gateway timed out gets a 504 with the gateway's own message.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
from typing import Any

from mitmproxy import http, version

logger = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """Build an OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`."""
    payload: dict[str, Any] = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return json.dumps(payload).encode()


def anthropic_error_body(status: int, message: str) -> bytes:
    """Build an Anthropic-style error body for clients of the Messages API."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def error_response(status: int, message: str, *, code: str | None = None, param: str | None = None,
                   api: str | None = None, headers: dict[str, str] | None = None) -> http.Response:
    """Make a JSON error response in the format of the client's API."""
    if api == "messages":
        body = anthropic_error_body(status, message)
    else:
        body = error_body(status, message, code=code, param=param)
    response = http.Response.make(status, body, {"content-type": "application/json"})
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# The record of the flow whose error hook ran last in the current asyncio task.
_failed_flow: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "meterway_failed_flow", default=None)

_TLS_WORDS = ("tls", "ssl", "certificate", "handshake")
_PROTOCOL_WORDS = ("protocol error", "cannot parse", "server closed connection", "unexpected server response")


def note_failed_flow(record: dict[str, Any]) -> None:
    """Remember a failing flow's record for the error page mitmproxy writes next, from an error hook."""
    _failed_flow.set(record)


def _upstream_hint(message: str) -> tuple[str, str]:
    """Return the fix to suggest and the error code for one of mitmproxy's upstream errors."""
    lowered = message.lower()
    if any(word in lowered for word in _TLS_WORDS):
        return (" The TLS connection to the backend failed: check that it serves HTTPS, and trust its CA "
                "with `meterway run --trusted-ca PEM` (mitmproxy option ssl_verify_upstream_trusted_ca) "
                "if it uses a private one.", "upstream_tls_error")
    if any(word in lowered for word in _PROTOCOL_WORDS):
        return (" The backend was reached but sent an invalid or incomplete HTTP response; check the "
                "backend's logs.", "upstream_protocol_error")
    return " Check that the backend is running and reachable, or fix its hostOverride.", "upstream_unreachable"


def _json_error_page(status_code: int, message: str = "") -> bytes:
    from mitmproxy.net.http import http1

    text = message or "the gateway could not complete the request"
    hint = ""
    code = None
    record = _failed_flow.get()
    _failed_flow.set(None)
    if record is not None and record.get("outcome") == "timeout" and record.get("error"):
        status_code, text, code = 504, record["error"], "upstream_timeout"
    elif status_code == 502:
        hint, code = _upstream_hint(text)
        if record is not None and record.get("upstream"):
            text = f"{text} (upstream {record['upstream']})"
    response = http.Response.make(
        status_code,
        error_body(status_code, f"{text}.{hint}".replace("..", "."), code=code),
        http.Headers(
            server=f"meterway (mitmproxy {version.VERSION})",
            connection="close",
            content_type="application/json",
        ),
    )
    return http1.assemble_response(response)


_installed = False


def install_json_error_pages() -> None:
    """Replace mitmproxy's HTML error page for HTTP/1 clients with a JSON error.

    Raises RuntimeError when mitmproxy's function is not the one this was written for.
    """
    global _installed
    if _installed:
        return
    from mitmproxy.proxy.layers.http import _http1

    original = getattr(_http1, "make_error_response", None)
    if original is None:
        raise RuntimeError(
            f"mitmproxy {version.VERSION} has no _http1.make_error_response; "
            "meterway is pinned to mitmproxy 12.3.1, reinstall with `pip install -e .`"
        )
    params = list(inspect.signature(original).parameters)
    if params != ["status_code", "message"]:
        raise RuntimeError(
            f"mitmproxy {version.VERSION} changed make_error_response{tuple(params)}; "
            "meterway is pinned to mitmproxy 12.3.1, reinstall with `pip install -e .`"
        )
    _http1.make_error_response = _json_error_page
    _installed = True
