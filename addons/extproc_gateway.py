"""The gateway-phase `extProc` policy: one ext_proc client and the calls it makes per flow.

The router sees the request's headers and buffered body and answers with changes, or with a
response of its own. This module turns those answers into changes to the mitmproxy flow and
records what happened in the flow record (`router_*` columns).
"""

from __future__ import annotations

import json
import logging
import weakref
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy.mode_specs import ReverseMode

from addons import record as flowrecord
from addons.extproc import ExtProcClient, ExtProcSession, ProcessingOptions

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


class RouterCalls:
    """Owns the ext_proc client of the gateway's extProc policy, if the config has one."""

    def __init__(self) -> None:
        self.client: ExtProcClient | None = None
        self._pending: Any | None = None
        self._started = False
        self._sessions: weakref.WeakKeyDictionary[http.HTTPFlow, ExtProcSession] = weakref.WeakKeyDictionary()
        # Bodies of responses the router replaced at the response-headers phase.
        self._replacements: weakref.WeakKeyDictionary[http.HTTPFlow, bytes] = weakref.WeakKeyDictionary()

    def reconfigure(self, gateway: Any) -> None:
        """Remember the policy of a newly loaded config; the client starts in `start()`."""
        policy = gateway.gateway_ext_proc()
        self._pending = (policy, gateway.meterway.ext_proc.message_timeout) if policy is not None else None
        if self._started:
            import asyncio

            asyncio.get_running_loop().create_task(self._swap())

    async def start(self) -> None:
        self._started = True
        await self._swap()

    async def _swap(self) -> None:
        old, self.client = self.client, None
        if self._pending is not None:
            policy, timeout = self._pending
            options = ProcessingOptions.from_config(policy.processing_options)
            client = ExtProcClient(
                policy.host,
                options,
                failure_mode=policy.failure_mode,
                message_timeout=timeout,
                allow_mode_override=policy.processing_options.allow_mode_override,
            )
            await client.start()
            self.client = client
            logger.info("semantic router at %s (failureMode %s)", policy.host, policy.failure_mode)
        if old is not None:
            await old.close()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def before_route(self, flow: http.HTTPFlow, rec: dict[str, Any],
                           body: dict[str, Any] | None) -> dict[str, Any] | None:
        """Call the router for this request and apply its answer to the flow.

        Returns the new JSON body when the router changed it, else None. When the router
        answers itself (or fails closed) the flow gets that response.
        """
        if self.client is None:
            return None
        request = flow.request
        session = self.client.session()
        self._sessions[flow] = session
        # Envoy sends the client's Host only as `:authority`, never as a `host` entry.
        headers = [(name.lower(), value) for name, value in request.headers.items(multi=True)
                   if name.lower() != "host"]
        decision = await session.request(
            request.method, "https" if request.scheme == "https" else "http",
            client_authority(flow), request.path, headers,
            request.get_content(strict=False) if request.raw_content else None, bool(rec.get("stream")),
        )
        rec["router_outcome"] = decision.outcome
        rec["router_ms"] = round(decision.latency_ms, 3) if decision.latency_ms is not None else None
        rec["router_headers"] = dict(decision.set_headers) if decision.set_headers else None
        if decision.error:
            rec["router_error"] = decision.error
            logger.warning("flow %s: semantic router %s: %s", flow.id, decision.outcome, decision.error)

        if decision.immediate is not None:
            imm = decision.immediate
            flow.response = http.Response.make(imm.status, imm.body or b"", list(
                (k.encode(), v.encode()) for k, v in imm.headers
            ))
            rec["outcome"] = "router_response" if decision.outcome == "immediate_response" else "gateway_error"
            if decision.outcome != "immediate_response":
                rec["error"] = decision.error
            return None

        if decision.outcome not in ("ok",):
            return None
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

    async def after_response_headers(self, flow: http.HTTPFlow, rec: dict[str, Any]) -> None:
        """Send the response headers to the router when the policy asks for them, and apply its reply.

        Header mutations and a `:status` change apply to the response. An immediate response
        (or the error of a router that failed closed) replaces it, as in Envoy. The upstream
        body is still read, into the new response, and `finish()` puts the router's body back.
        """
        session = self._sessions.get(flow)
        if session is None or flow.response is None:
            return
        headers = [(name.lower(), value) for name, value in flow.response.headers.items(multi=True)]
        decision = await session.response_headers(flow.response.status_code, headers)
        if decision.error:
            rec["router_error"] = decision.error
            logger.warning("flow %s: semantic router %s on the response: %s", flow.id, decision.outcome, decision.error)
        if decision.immediate is not None:
            imm = decision.immediate
            # A new response object also keeps later addons from streaming the upstream body.
            flow.response = http.Response.make(imm.status, imm.body, [(k.encode(), v.encode()) for k, v in imm.headers])
            self._replacements[flow] = imm.body
            rec["router_outcome"] = decision.outcome
            rec["outcome"] = "router_response" if decision.outcome == "immediate_response" else "gateway_error"
            if decision.outcome != "immediate_response":
                rec["error"] = decision.error
            return
        if decision.outcome != "ok":
            return
        # NOTE: a CONTINUE_AND_REPLACE body in this reply is not applied yet.
        flow.response.status_code = decision.status
        flow.response.headers.clear()
        for name, value in decision.headers:
            if not name.startswith(":"):
                flow.response.headers.add(name, value)

    def chunk_observer(self, flow: http.HTTPFlow) -> Any | None:
        """Return a callable that sends streamed response chunks to the router, or None.

        Observe-only: mitmproxy's stream callbacks cannot wait for a reply, so the chunks go
        out and replies are not applied (the session warns once if a router sends changes).
        """
        session = self._sessions.get(flow)
        if session is None or session.response_mode.body == "none":
            return None
        return session.observe_response_chunk

    async def finish(self, flow: http.HTTPFlow) -> None:
        """Finish the flow's ext_proc exchange: send a buffered response body to the router, then close the stream.

        A router's replacement body from the response-headers phase is restored first.
        Called from the `response` and `error` hooks.
        """
        replaced_body = self._replacements.pop(flow, None)
        if replaced_body is not None and flow.response is not None:
            # mitmproxy stored the upstream body into the replacement response meanwhile.
            flow.response.raw_content = replaced_body
        session = self._sessions.pop(flow, None)
        if session is None:
            return
        try:
            response = flow.response
            # A streamed response has already gone to the client (its chunks went to the
            # router observe-only through `chunk_observer`), so only a body that mitmproxy
            # buffered can still be sent to the router and changed.
            if replaced_body is None and flow.error is None and response is not None and not response.stream:
                await self._response_body(flow, session, response)
        finally:
            await session.close()

    async def _response_body(self, flow: http.HTTPFlow, session: ExtProcSession, response: http.Response) -> None:
        body = response.raw_content or b""
        if not body or session.response_mode.body == "none":
            # Envoy sends no body message for a response without a body either.
            return
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
            return
        if decision.outcome != "ok":
            return
        if decision.headers is not None:
            response.headers.clear()
            for name, value in decision.headers:
                if not name.startswith(":"):
                    response.headers.add(name, value)
        if decision.body is not None:
            response.raw_content = decision.body
