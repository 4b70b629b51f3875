"""The `extProc` policies: their ext_proc clients and the calls each flow makes.

A router receives the request's headers and buffered body and replies with changes, or with a
response of its own. This module applies those replies to the mitmproxy flow and records what
happened in the flow record (`router_*` columns).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from mitmproxy import http

from addons.extproc import ExtProcClient, ExtProcSession, ProcessingOptions
from addons.extproc_apply import (
    apply_request_decision, client_authority, send_response_body, send_response_headers,
)

logger = logging.getLogger(__name__)

# The identity of an `extProc` policy's client: target, options, failure mode, timeout.
_PolicyKey = tuple[str, str, str, float]


def _policy_key(policy: Any, message_timeout: float) -> _PolicyKey:
    return (policy.host, policy.processing_options.model_dump_json(), policy.failure_mode, message_timeout)


class RouterCalls:
    """Owns the ext_proc clients of the config's `extProc` policies and the calls each flow makes.

    The gateway-phase policy gets its client when the config loads (`client`, which the
    readiness check watches). A route's policy gets a client the first time a request takes
    that route, one per distinct policy, kept until the next reload or shutdown.
    """

    def __init__(self) -> None:
        self.client: ExtProcClient | None = None
        self._pending: Any | None = None
        self._message_timeout = 60.0
        self._started = False
        # Clients of route-level policies, by policy, created on first use.
        self._level_clients: dict[_PolicyKey, ExtProcClient] = {}
        self._level_lock: asyncio.Lock | None = None
        # Each flow's sessions in the order the request reached them.
        self._sessions: weakref.WeakKeyDictionary[http.HTTPFlow, list[ExtProcSession]] = weakref.WeakKeyDictionary()
        # Bodies of responses the router replaced at the response-headers phase.
        self._replacements: weakref.WeakKeyDictionary[http.HTTPFlow, bytes] = weakref.WeakKeyDictionary()
        # Streams closing in the background, after their flow's response went on.
        self._closing: set[asyncio.Task] = set()

    def reconfigure(self, gateway: Any) -> None:
        """Remember the policies of a newly loaded config; the clients start in `start()`."""
        policy = gateway.gateway_ext_proc()
        self._message_timeout = gateway.meterway.ext_proc.message_timeout
        self._pending = policy
        if self._started:
            asyncio.get_running_loop().create_task(self._swap())

    async def start(self) -> None:
        """Start the gateway-phase client in the running event loop."""
        self._started = True
        self._level_lock = asyncio.Lock()
        await self._swap()

    async def _swap(self) -> None:
        old, self.client = self.client, None
        old_levels, self._level_clients = self._level_clients, {}
        if self._pending is not None:
            self.client = await self._open(self._pending)
            logger.info("semantic router at %s (failureMode %s)", self._pending.host, self._pending.failure_mode)
        for client in ([old] if old is not None else []) + list(old_levels.values()):
            await client.close()

    async def _open(self, policy: Any) -> ExtProcClient:
        client = ExtProcClient(
            policy.host,
            ProcessingOptions.from_config(policy.processing_options),
            failure_mode=policy.failure_mode,
            message_timeout=self._message_timeout,
            allow_mode_override=policy.processing_options.allow_mode_override,
        )
        await client.start()
        return client

    async def close(self) -> None:
        """Close every client: the gateway phase's and those of route policies."""
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=2.0)
        clients = ([self.client] if self.client is not None else []) + list(self._level_clients.values())
        self.client = None
        self._level_clients = {}
        for client in clients:
            await client.close()

    async def _client_for(self, policy: Any) -> ExtProcClient:
        """Return the client of a route-level policy, creating it on first use."""
        key = _policy_key(policy, self._message_timeout)
        if self.client is not None and self._pending is not None and _policy_key(self._pending, self._message_timeout) == key:
            return self.client  # the same router with the same options: share the channel
        if self._level_lock is None:
            self._level_lock = asyncio.Lock()
        async with self._level_lock:
            client = self._level_clients.get(key)
            if client is None:
                client = await self._open(policy)
                self._level_clients[key] = client
                logger.info("route-level router at %s (failureMode %s)", policy.host, policy.failure_mode)
            return client

    async def before_route(self, flow: http.HTTPFlow, rec: dict[str, Any],
                           body: dict[str, Any] | None) -> dict[str, Any] | None:
        """Call the gateway-phase router for this request and apply its reply to the flow.

        Returns the new JSON body when the router changed it, else None. When the router
        answers itself (or fails closed) the flow gets that response.
        """
        if self.client is None:
            return None
        return await self._process_request(flow, rec, self.client, "gateway")

    async def after_route(self, flow: http.HTTPFlow, rec: dict[str, Any], policy: Any | None,
                          level: str = "route") -> dict[str, Any] | None:
        """Call the router of the chosen route's `extProc` policy and apply its reply.

        It runs after the route and backend are chosen, so its changes to headers, path and
        body reach the upstream but cannot change the route. Returns the new JSON body when
        the router changed it, else None; an immediate response or failClosed error is set
        on the flow.
        """
        if policy is None:
            return None
        client = await self._client_for(policy)
        return await self._process_request(flow, rec, client, level)

    async def _process_request(self, flow: http.HTTPFlow, rec: dict[str, Any], client: ExtProcClient,
                               level: str) -> dict[str, Any] | None:
        request = flow.request
        session = client.session()
        sessions = self._sessions.setdefault(flow, [])
        sessions.append(session)
        # Envoy sends the client's Host only as `:authority`, never as a `host` entry.
        headers = [(name.lower(), value) for name, value in request.headers.items(multi=True)
                   if name.lower() != "host"]
        decision = await session.request(
            request.method, "https" if request.scheme == "https" else "http",
            client_authority(flow), request.path, headers,
            request.get_content(strict=False) if request.raw_content else None, bool(rec.get("stream")),
        )
        # The `router_*` columns describe the first call a flow makes: the gateway phase's
        # when the config has one, else the route's. The schema has one set of them.
        # NOTE: so a later call that fails open shows only in the log, not in the row.
        if len(sessions) == 1:
            rec["router_outcome"] = decision.outcome
            rec["router_ms"] = round(decision.latency_ms, 3) if decision.latency_ms is not None else None
            rec["router_headers"] = dict(decision.set_headers) if decision.set_headers else None
            if decision.error:
                rec["router_error"] = decision.error
        if decision.error:
            # The client logs failures at warning level, at most one line per 10 s with a count,
            # so a router outage does not write one line per request.
            logger.debug("flow %s: %s-level router %s: %s", flow.id, level, decision.outcome, decision.error)

        if decision.immediate is not None:
            imm = decision.immediate
            flow.response = http.Response.make(imm.status, imm.body or b"", list(
                (k.encode(), v.encode()) for k, v in imm.headers
            ))
            # A later level that ends the request is what the row's outcome must show.
            rec["router_outcome"] = decision.outcome
            if decision.error:
                rec["router_error"] = decision.error
            rec["outcome"] = "router_response" if decision.outcome == "immediate_response" else "gateway_error"
            if decision.outcome != "immediate_response":
                rec["error"] = decision.error
            return None

        if decision.outcome not in ("ok",):
            return None
        return apply_request_decision(request, rec, decision)

    async def after_response_headers(self, flow: http.HTTPFlow, rec: dict[str, Any]) -> None:
        """Send the response headers to each of the flow's routers whose policy sends them, and apply the replies.

        The innermost router (the last one the request reached) goes first, as Envoy runs
        response filters in reverse order. Header mutations and a `:status` change apply to
        the response. An immediate response (or the error of a router that failed closed)
        replaces it and the outer routers are not asked. The upstream body is still read,
        into the new response, and `finish()` puts the router's body back.
        """
        for session in reversed(self._sessions.get(flow, [])):
            if flow.response is None:
                return
            replaced = await send_response_headers(flow, rec, session)
            if replaced is not None:
                self._replacements[flow] = replaced
                return

    def chunk_observer(self, flow: http.HTTPFlow) -> Any | None:
        """Return a callable that sends streamed response chunks to the flow's routers, or None.

        Observe-only: mitmproxy's stream callbacks cannot wait for a reply, so the chunks go
        out and replies are not applied (each session warns once if a router sends changes).
        """
        observers = [session.observe_response_chunk for session in reversed(self._sessions.get(flow, []))
                     if session.response_mode.body != "none"]
        if not observers:
            return None
        if len(observers) == 1:
            return observers[0]

        def observe_all(chunk: bytes, end: bool) -> None:
            for observe in observers:
                observe(chunk, end)

        return observe_all

    async def finish(self, flow: http.HTTPFlow) -> None:
        """Finish the flow's ext_proc exchanges: send a buffered response body to each router, then close the streams.

        A router's replacement body from the response-headers phase is restored first. The
        innermost router gets the body first, and the next one receives the body with those changes.
        Called from the `response` and `error` hooks.
        """
        replaced_body = self._replacements.pop(flow, None)
        if replaced_body is not None and flow.response is not None:
            # mitmproxy stored the upstream body into the replacement response meanwhile.
            flow.response.raw_content = replaced_body
        sessions = self._sessions.pop(flow, [])
        try:
            for session in reversed(sessions):
                response = flow.response
                # A streamed response has already gone to the client (its chunks went to the
                # router observe-only through `chunk_observer`), so only a body that mitmproxy
                # buffered can still be sent to the router and changed.
                if replaced_body is not None or flow.error is not None or response is None or response.stream:
                    break
                if await send_response_body(flow, session, response):
                    break
        finally:
            if sessions:
                # Closing waits for the router's end of stream, a round trip that the client's
                # response has no reason to wait for: it runs in a task of its own.
                task = asyncio.get_running_loop().create_task(_close_all(sessions))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)


async def _close_all(sessions: list[ExtProcSession]) -> None:
    for session in sessions:
        try:
            await session.close()
        except Exception:  # a router that misbehaves at the end must not leave an unread task error
            logger.exception("closing an ext_proc stream failed")
