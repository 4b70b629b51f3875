"""Applying ext_proc replies to a mitmproxy flow, as Envoy's filter would."""

from __future__ import annotations

import json
import logging
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy.mode_specs import ReverseMode

from addons import record as flowrecord
from addons.extproc import ExtProcSession

logger = logging.getLogger(__name__)

# Pseudo-headers travel in the ext_proc header map but are not HTTP headers of the flow.
_PSEUDO = (":method", ":scheme", ":authority", ":path")


def client_authority(flow: http.HTTPFlow) -> str:
    """Return the authority the client addressed, which Envoy sends as `:authority`.

    In reverse mode mitmproxy replaces `Host` with the reverse target before the first hook,
    unless `keep_host_header` is set. The listener's own address is used instead, because
    that is what a client's `Host` names unless it connected through a DNS name.
    """
    request = flow.request
    try:
        keep_host = bool(ctx.options.keep_host_header)
    except AttributeError:  # no running master, as in unit tests
        keep_host = False
    sockname = flow.client_conn.sockname
    if keep_host or not isinstance(flow.client_conn.proxy_mode, ReverseMode) or not sockname:
        return request.host_header or request.pretty_host
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def send_response_headers(flow: http.HTTPFlow, rec: dict[str, Any], session: ExtProcSession) -> bytes | None:
    """Send the response headers to one router and apply its reply.

    Returns the router's body when it replaced the response, else None.
    """
    assert flow.response is not None
    headers = [(name.lower(), value) for name, value in flow.response.headers.items(multi=True)]
    decision = await session.response_headers(flow.response.status_code, headers)
    if decision.error:
        rec["router_error"] = decision.error
        logger.warning("flow %s: semantic router %s on the response: %s", flow.id, decision.outcome, decision.error)
    if decision.immediate is not None:
        imm = decision.immediate
        # A new response object also keeps later addons from streaming the upstream body.
        flow.response = http.Response.make(imm.status, imm.body, [(k.encode(), v.encode()) for k, v in imm.headers])
        rec["router_outcome"] = decision.outcome
        rec["outcome"] = "router_response" if decision.outcome == "immediate_response" else "gateway_error"
        if decision.outcome != "immediate_response":
            rec["error"] = decision.error
        return imm.body or b""
    if decision.outcome != "ok":
        return None
    # NOTE: a CONTINUE_AND_REPLACE body in this reply is not applied yet.
    flow.response.status_code = decision.status
    flow.response.headers.clear()
    for name, value in decision.headers:
        if not name.startswith(":"):
            flow.response.headers.add(name, value)
    return None


async def send_response_body(flow: http.HTTPFlow, session: ExtProcSession, response: http.Response) -> bool:
    """Send a buffered response body to one router and apply its reply; return True when it replaced the response."""
    body = response.raw_content or b""
    if not body or session.response_mode.body == "none":
        # Envoy sends no body message for a response without a body either.
        return False
    headers = [(name.lower(), value) for name, value in response.headers.items(multi=True)]
    decision = await session.response_body(body, headers)
    rec = flowrecord.get(flow)
    if decision.error:
        logger.warning("flow %s: semantic router %s on the response body: %s",
                       flow.id, decision.outcome, decision.error)
    if decision.immediate is not None:
        imm = decision.immediate
        flow.response = http.Response.make(imm.status, imm.body, [(k.encode(), v.encode()) for k, v in imm.headers])
        if rec is not None:
            rec["router_outcome"] = decision.outcome
            rec["outcome"] = "router_response" if decision.outcome == "immediate_response" else "gateway_error"
            if decision.error:
                rec["router_error"] = decision.error
                rec["error"] = decision.error
        return True
    if decision.outcome != "ok":
        return False
    if decision.headers is not None:
        response.headers.clear()
        for name, value in decision.headers:
            if not name.startswith(":"):
                response.headers.add(name, value)
    if decision.body is not None:
        response.raw_content = decision.body
    return False


def apply_request_decision(request: http.Request, rec: dict[str, Any], decision: Any) -> dict[str, Any] | None:
    """Apply a router's CONTINUE reply to the request; return the new JSON body, or None."""
    # Envoy ignores mutations of `host`, so the original header stays as it was.
    host = request.headers.get_all("host")
    request.headers.clear()
    for value in host:
        request.headers.add("host", value)
    for name, value in decision.headers:
        if name in _PSEUDO or name == "host":
            continue
        request.headers.add(name, value)
    if decision.path and decision.path != request.path:
        request.path = decision.path
    if decision.body is None:
        return None
    request.content = decision.body
    try:
        new_body = json.loads(decision.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(new_body, dict):
        return None
    new_model = new_body.get("model")
    if isinstance(new_model, str) and new_model != rec.get("requested_model"):
        rec["router_model"] = new_model
    return new_body
