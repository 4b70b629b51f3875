"""The router addon: picks each request's route, backend and model, and sends it there.

Per request, in agentgateway's order: the gateway's `extProc` policy (the semantic router)
receives the headers and buffered body, and may change them or send a response itself. Then
the best route for the resulting request and its backend are chosen, the route's own
`extProc` policy is called, `modelAliases` rewrite the model, and the upstream is set from
the backend's provider. Everything decided goes into the flow record for costlog.
"""

from __future__ import annotations

import json
import logging
import random
import weakref
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from addons import record as flowrecord
from addons.config import Config
from addons.errors import error_response, note_failed_flow
from addons.extproc_gateway import RouterCalls
from addons.headercheck import header_problem
from addons.anthropic_translate import TranslationError, chat_to_messages
from addons.apiroutes import api_for, gemini_model_from_path
from addons.providers import Provider, UnsupportedProvider, is_loopback, provider_for, resolve_upstream, split_hostport
from addons.requestbody import (
    BadRequest, classify_api, client_asked_for_usage, parse_json_body, wants_stream, write_json_body,
)
from addons.routing import RequestFacts, apply_model_alias, route_name, select_route
from addons.upstream_timeout import UpstreamDeadline

logger = logging.getLogger(__name__)


@dataclass
class BackendChoice:
    """The chosen backend as auth needs it: provider, key and the header that carries the key."""

    provider: Provider
    key: str | None
    header: str
    scheme: str


def _header_dict(request: http.Request) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.calls = RouterCalls()
        self.deadline = UpstreamDeadline()
        self._choices: weakref.WeakKeyDictionary[http.HTTPFlow, BackendChoice] = weakref.WeakKeyDictionary()
        # The chosen route's policies, for checks that can only run after route selection.
        self._route_policies: weakref.WeakKeyDictionary[http.HTTPFlow, Any] = weakref.WeakKeyDictionary()
        config.on_reload(self.calls.reconfigure)

    async def running(self) -> None:
        await self.calls.start()

    async def done(self) -> None:
        await self.calls.close()

    def route_policies_for(self, flow: http.HTTPFlow) -> Any | None:
        """Return the `policies` of the route chosen for a flow, or None."""
        return self._route_policies.get(flow)

    def choice_for(self, flow: http.HTTPFlow) -> BackendChoice | None:
        """Return the backend chosen for a flow, for key injection."""
        return self._choices.get(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live:
            return
        port = flow.client_conn.sockname[1] if flow.client_conn.sockname else None
        rec = flowrecord.start(flow, port)
        rec["user_agent"] = flow.request.headers.get("user-agent")
        rec["api"] = classify_api(flow.request.path)
        problem = header_problem(flow.request.headers.fields)
        if problem is not None:
            self._reject(flow, 400, problem, code="invalid_header")
            return
        limit = self._body_limit()
        length = flow.request.headers.get("content-length", "")
        if limit and length.isdigit() and int(length) > limit:
            self._reject(flow, 413, f"request body of {length} bytes is over the gateway's limit of {limit} "
                         "bytes (frontendPolicies.http.maxBufferSize); send a smaller request or raise the limit",
                         code="request_too_large")

    def _body_limit(self) -> int | None:
        gateway = self.config.gateway
        policies = getattr(gateway, "frontend_policies", None)
        http_policy = getattr(policies, "http", None)
        return getattr(http_policy, "max_buffer_size", None)

    def _reject(self, flow: http.HTTPFlow, status: int, message: str, *, code: str | None = None,
                param: str | None = None) -> None:
        rec = flowrecord.get(flow) or flowrecord.start(flow, None)
        rec["outcome"] = "gateway_error"
        rec["error"] = message
        flow.response = error_response(status, message, code=code, param=param, api=rec.get("api"))
        logger.info("rejected %s %s (flow %s): %s", flow.request.method, flow.request.path, flow.id, message)

    async def request(self, flow: http.HTTPFlow) -> None:
        rec = flowrecord.get(flow)
        if rec is None or flow.response is not None or not flow.live:
            return
        flowrecord.snapshot_client_request(flow)
        listener = self.config.listener_for(rec.get("bind"))
        if listener is None:
            self._reject(flow, 404, f"port {rec.get('bind')} is not a listener of this gateway config; "
                         "send requests to one of its binds[].port or llm.port", code="no_listener")
            return
        limit = self._body_limit()
        if limit and len(flow.request.raw_content or b"") > limit:
            self._reject(flow, 413, f"request body of {len(flow.request.raw_content or b'')} bytes is over the "
                         f"gateway's limit of {limit} bytes (frontendPolicies.http.maxBufferSize); send a "
                         "smaller request or raise the limit", code="request_too_large")
            return
        try:
            body = parse_json_body(flow.request) if flow.request.method not in ("GET", "HEAD") else None
        except BadRequest as err:
            self._reject(flow, err.status, str(err), param=err.param)
            return
        rec["requested_model"] = body.get("model") if body else None
        if rec["requested_model"] is None and rec["api"] == "generate_content":
            rec["requested_model"] = gemini_model_from_path(flow.request.path)
        rec["stream"] = 1 if wants_stream(rec["api"], flow.request.path, body) else 0
        usage_asked = client_asked_for_usage(body)

        if rec["api"] == "models" and flow.request.method == "GET":
            self._answer_models(flow, listener)
            return

        if listener.kind == "bind":
            decided = await self.calls.before_route(flow, rec, body)
            if flow.response is not None:
                return
            if decided is not None:
                body = decided
            await self._route_bind(flow, rec, listener, body, usage_asked)
        else:
            self._route_llm(flow, rec, body, usage_asked)
        if flow.response is None and rec.get("upstream"):
            self.deadline.arm(flow, rec, self.config.gateway.meterway.upstream_timeout)

    async def _route_bind(self, flow: http.HTTPFlow, rec: dict[str, Any], listener: Any,
                    body: dict[str, Any] | None, usage_asked: bool) -> None:
        facts = RequestFacts(
            method=flow.request.method,
            path=flow.request.path.split("?", 1)[0],
            headers=_header_dict(flow.request),
            query=dict(flow.request.query.items()),
        )
        for listener_index, config_listener in enumerate(listener.bind.listeners):
            choice = select_route(config_listener.routes, facts)
            if choice is not None:
                break
        else:
            selected = facts.headers.get("x-selected-model")
            hint = f" (x-selected-model: {selected})" if selected else ""
            self._reject(flow, 404, f"no route on port {listener.port} matches {facts.method} {facts.path}{hint}; "
                         "add a route without `matches` as a fallback", code="no_route")
            return
        route = choice.route
        if route.policies is not None:
            self._route_policies[flow] = route.policies
        backends = [b for b in route.backends if b.weight > 0] or list(route.backends)
        if not backends:
            self._reject(flow, 500, f"route {route_name(route, listener.port, listener_index, choice.index, None)} "
                         "has no backends; give it at least one", code="no_backend")
            return
        backend = random.choices(backends, weights=[max(b.weight, 1) for b in backends])[0]
        ai = backend.ai
        rec["route"] = route_name(route, listener.port, listener_index, choice.index, ai.name if ai else None)
        if ai is None:
            self._reject(flow, 500, f"route {rec['route']} uses a non-AI backend, which meterway does not "
                         "serve yet; use an `ai` backend", code="unsupported_backend")
            return
        aliases = {}
        api_routes = None
        for policies in (route.policies, ai.policies, backend.policies):
            ai_policy = getattr(policies, "ai", None)
            if ai_policy is not None and ai_policy.model_aliases:
                aliases = ai_policy.model_aliases  # the most specific level that sets them wins
            if ai_policy is not None and ai_policy.routes:
                api_routes = ai_policy.routes
        if api_routes:
            rec["api"] = api_for(flow.request.path, api_routes)
        auth = None
        for policies in (route.policies, ai.policies, backend.policies):
            if getattr(policies, "backend_auth", None) is not None:
                auth = policies.backend_auth
        key = self.config.gateway.backend_key(auth) if auth is not None else None

        # agentgateway runs the route's extProc after it has chosen the route and its
        # backend and before the backend's LLM handling applies `modelAliases`, so the
        # router's changes reach the upstream but never re-select the route.
        route_ext_proc = getattr(route.policies, "ext_proc", None)
        if route_ext_proc is not None:
            decided = await self.calls.after_route(flow, rec, route_ext_proc)
            if flow.response is not None:
                return
            if decided is not None:
                body = decided
        self._send(flow, rec, body, usage_asked, provider_kind=ai.provider_kind, backend_name=ai.name,
                   host_override=ai.host_override, path_override=ai.path_override,
                   path_prefix=ai.path_prefix, aliases=aliases, fixed_model=ai.provider.settings.model,
                   key=key)

    def _route_llm(self, flow: http.HTTPFlow, rec: dict[str, Any], body: dict[str, Any] | None,
                   usage_asked: bool) -> None:
        from addons.llm import LlmRouteError, resolve_llm_model

        try:
            target = resolve_llm_model(self.config.gateway.llm, rec.get("requested_model"), self.config.llm_keys)
        except LlmRouteError as err:
            self._reject(flow, 404, str(err), code="model_not_found", param="model")
            return
        rec["route"] = f"llm/{target.name}"
        self._send(flow, rec, body, usage_asked, provider_kind=target.provider_kind, backend_name=target.name,
                   host_override=target.host_override, path_override=None, path_prefix=None,
                   aliases={}, fixed_model=target.model, key=target.key)

    def _send(self, flow: http.HTTPFlow, rec: dict[str, Any], body: dict[str, Any] | None, usage_asked: bool, *,
              provider_kind: str, backend_name: str | None, host_override: str | None,
              path_override: str | None, path_prefix: str | None, aliases: dict[str, str],
              fixed_model: str | None, key: str | None) -> None:
        try:
            provider = provider_for(provider_kind)
        except UnsupportedProvider as err:
            self._reject(flow, 500, str(err), code="unsupported_provider")
            return
        rec["backend"] = backend_name
        rec["provider"] = provider.catalog_id
        native_gemini = provider.kind == "gemini" and rec["api"] == "generate_content"
        model = body.get("model") if body else None
        if native_gemini:
            model = rec.get("requested_model")
        routed = fixed_model or apply_model_alias(aliases, model)
        rec["routed_model"] = routed
        changed = False
        if native_gemini and routed and routed != model:
            flow.request.path = flow.request.path.replace(f"/models/{model}:", f"/models/{routed}:", 1)
        elif body is not None and routed is not None and routed != model:
            body["model"] = routed
            changed = True
        translate = provider.kind == "anthropic" and rec["api"] == "chat_completions"
        if translate and body is not None:
            try:
                body = chat_to_messages(body)
            except TranslationError as err:
                self._reject(flow, 400, str(err), code="unsupported_for_anthropic")
                return
            rec["translate"] = "anthropic"
            rec["client_usage"] = usage_asked
            path_override = path_override or "/v1/messages"
            changed = True
        elif body is not None and rec["stream"] and rec["api"] == "chat_completions" and not usage_asked:
            options = body.get("stream_options")
            if not isinstance(options, dict) or options.get("include_usage") is not True:
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                changed = True
            rec["usage_added"] = True
        if changed:
            write_json_body(flow.request, body)
        if rec["stream"]:
            # The stream tap reads events as they pass, which needs them uncompressed.
            flow.request.headers["accept-encoding"] = "identity"

        upstream = resolve_upstream(provider, flow.request.path, host_override=host_override,
                                    path_override=path_override, path_prefix=path_prefix)
        rec["local"] = is_loopback(upstream.host)
        scheme, host, port = self.config.map_upstream(upstream.scheme, upstream.host, upstream.port)
        flow.request.scheme = scheme
        flow.request.host = host
        flow.request.port = port
        flow.request.path = upstream.path
        rec["upstream"] = f"{host}:{port}"
        header, scheme = provider.auth_header, provider.auth_scheme
        if native_gemini:
            header, scheme = "x-goog-api-key", ""  # the native API's key header
        self._choices[flow] = BackendChoice(provider, key, header, scheme)
        logger.debug("flow %s: route %s -> %s %s", flow.id, rec["route"], rec["upstream"], routed)

    def _answer_models(self, flow: http.HTTPFlow, listener: Any) -> None:
        from addons.llm import served_models

        rec = flowrecord.get(flow)
        models = served_models(self.config.gateway, listener)
        payload = {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": owner} for name, owner in models
        ]}
        rec["outcome"] = "ok"
        rec["route"] = "models"
        flow.response = http.Response.make(200, json.dumps(payload).encode(), {"content-type": "application/json"})

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.deadline.disarm(flow)
        rec = flowrecord.get(flow)
        if rec is not None and flow.live:
            await self.calls.after_response_headers(flow, rec)

    async def response(self, flow: http.HTTPFlow) -> None:
        self.deadline.disarm(flow)
        await self.calls.finish(flow)

    async def error(self, flow: http.HTTPFlow) -> None:
        self.deadline.disarm(flow)
        rec = flowrecord.get(flow)
        if rec is not None:
            # Before any await: the error page mitmproxy writes next reads it in this task.
            note_failed_flow(rec)
        await self.calls.finish(flow)


__all__ = ["Router", "BackendChoice", "split_hostport"]
