"""The auth addon: client keys in, backend keys out.

Client credentials never reach a provider: the gateway reads them, checks them against the
`apiKey` policy when there is one, and removes them. The backend key from `backendAuth` goes
into the upstream request only, and is redacted from the live flow as soon as the response
starts, because mitmweb and `--flow-detail` show live flows.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import weakref
from typing import Any

from mitmproxy import http

from addons import record as flowrecord
from addons.config import Config
from addons.errors import error_response
from addons.providers import ANTHROPIC_VERSION
from addons.router import Router

logger = logging.getLogger(__name__)

REDACTED = "[redacted]"
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization")
CREDENTIAL_QUERY = ("key",)
CREDENTIAL_HEADER_BYTES = frozenset(name.encode() for name in CREDENTIAL_HEADERS)


def credential_headers_in(request: http.Request) -> list[str]:
    """Return the credential headers a request has, in one pass over its fields.

    Each `name in headers` scans every field, and the hooks would otherwise ask for each
    of the five names twice per request.
    """
    present = {name.lower() for name, _ in request.headers.fields} & CREDENTIAL_HEADER_BYTES
    return [name for name in CREDENTIAL_HEADERS if name.encode() in present]


def _has_query(request: http.Request) -> bool:
    # Reading `request.query` parses the URL each time; most API requests have no query.
    return "?" in request.path


def presented_key(request: http.Request) -> str | None:
    """Return the client key a request carries (Bearer, x-api-key, x-goog-api-key or ?key=)."""
    value = request.headers.get("authorization", "")
    if value.lower().startswith("bearer "):
        return value[7:].strip() or None
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        if request.headers.get(name):
            return request.headers[name].strip()
    return request.query.get("key") or None


def redact_credentials(request: http.Request) -> list[str]:
    """Replace every credential header and `key` query value with a marker; return the names."""
    found = credential_headers_in(request)
    for name in found:
        request.headers[name] = REDACTED
    if _has_query(request) and any(name in request.query for name in CREDENTIAL_QUERY):
        query = request.query
        for name in CREDENTIAL_QUERY:
            if name in query:
                query[name] = REDACTED
                found.append(f"?{name}")
    return found


def _entry_matches(entry: Any, key: str) -> bool:
    # Both sides are hashed first, so the comparison takes the same time whatever the
    # lengths, and compare_digest keeps it constant in the contents.
    presented = hashlib.sha256(key.encode()).hexdigest()
    if entry.key is not None:
        return hmac.compare_digest(hashlib.sha256(entry.key.encode()).hexdigest(), presented)
    algorithm, _, digest = (entry.key_hash or "").partition(":")
    if algorithm.lower() != "sha256" or not digest:
        return False
    return hmac.compare_digest(presented, digest.lower())


def client_name(entry: Any, index: int) -> str:
    """Name a client key by its metadata (`name`, else `user`), else by its position."""
    metadata = entry.metadata if isinstance(entry.metadata, dict) else {}
    for field in ("name", "user", "client"):
        if isinstance(metadata.get(field), str):
            return metadata[field]
    return f"key-{index}"


class Auth:
    def __init__(self, config: Config, router: Router) -> None:
        self.config = config
        self.router = router
        # The client key of each flow, kept off the flow (which is shown and stored) until a
        # route's apiKey policy has been checked in `request`.
        self._keys: weakref.WeakKeyDictionary[http.HTTPFlow, str | None] = weakref.WeakKeyDictionary()

    def _api_key_policies(self, listener: Any) -> list[Any]:
        gateway = self.config.gateway
        policies = []
        for top in getattr(gateway, "policies", None) or ():
            if top.phase == "gateway" and top.policy.api_key is not None:
                policies.append(top.policy.api_key)
        if listener is not None and listener.kind == "bind":
            for config_listener in listener.bind.listeners:
                if config_listener.policies is not None and config_listener.policies.api_key is not None:
                    policies.append(config_listener.policies.api_key)
        if listener is not None and listener.kind == "llm" and gateway.llm.policies is not None:
            if gateway.llm.policies.api_key is not None:
                policies.append(gateway.llm.policies.api_key)
        return policies

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        rec = flowrecord.get(flow)
        if rec is None or flow.response is not None:
            return
        listener = self.config.listener_for(rec.get("bind"))
        policies = self._api_key_policies(listener)
        key = presented_key(flow.request)
        if policies:
            self._check_client(flow, rec, policies, key)
        self._keys[flow] = key
        rec["client_credentials"] = redact_credentials(flow.request)

    def _check_route_client(self, flow: http.HTTPFlow, rec: dict[str, Any]) -> None:
        """Check the chosen route's apiKey policy, which only applies after route selection."""
        key = self._keys.pop(flow, None)
        route_policies = self.router.route_policies_for(flow)
        policy = getattr(route_policies, "api_key", None)
        if policy is not None:
            self._check_client(flow, rec, [policy], key)

    def _check_client(self, flow: http.HTTPFlow, rec: dict[str, Any], policies: list[Any],
                      key: str | None) -> None:
        if rec.get("is_replay") and rec.get("replayed_client"):
            # A replay from mitmweb runs as the client of the original request, by name.
            rec["client"] = rec["replayed_client"]
            return
        strict = any(policy.mode == "strict" for policy in policies)
        if key is None:
            if strict:
                self._reject(flow, rec, "missing API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`")
            return
        for policy in policies:
            for index, entry in enumerate(policy.keys):
                if _entry_matches(entry, key):
                    rec["client"] = client_name(entry, index)
                    return
        if strict or any(policy.mode == "optional" for policy in policies):
            self._reject(flow, rec, "invalid API key: it matches none of the gateway's apiKey entries; "
                         "check the key or ask for one")

    @staticmethod
    def _reject(flow: http.HTTPFlow, rec: dict[str, Any], message: str) -> None:
        rec["outcome"] = "gateway_error"
        rec["error"] = message
        flow.response = error_response(401, message, code="invalid_api_key", api=rec.get("api"))

    def request(self, flow: http.HTTPFlow) -> None:
        rec = flowrecord.get(flow)
        if rec is None or flow.response is not None or not flow.live:
            return
        self._check_route_client(flow, rec)
        if flow.response is not None:
            return
        for name in credential_headers_in(flow.request):
            del flow.request.headers[name]
        if _has_query(flow.request):
            for name in CREDENTIAL_QUERY:
                if name in flow.request.query:
                    del flow.request.query[name]
        choice = self.router.choice_for(flow)
        if choice is None or not choice.key:
            return
        provider = choice.provider
        flow.request.headers[choice.header] = choice.scheme + choice.key
        rec["key_header"] = choice.header
        if provider.kind == "anthropic" and "anthropic-version" not in flow.request.headers:
            flow.request.headers["anthropic-version"] = ANTHROPIC_VERSION

    def _scrub(self, flow: http.HTTPFlow) -> None:
        rec = flowrecord.get(flow)
        if rec is None:
            return
        header = rec.get("key_header")
        if header and header in flow.request.headers:
            flow.request.headers[header] = REDACTED

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._scrub(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._scrub(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._scrub(flow)
