"""What meterway implements of agentgateway's config, and the checks that reject the rest.

`UNSUPPORTED` is the one list of agentgateway fields that load (the models know them) but
that meterway does not implement yet. To switch a field on, implement it and delete its
name here. Fields left at their default or empty (`providers: []`) are not reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from addons.config_model import Gateway, Listener, Route, TopPolicy
from addons.config_monitoring import TracingConfig, Webhook, parse_stats_addr
from addons.config_policies import ApiKeyEntry, BackendAuth, BackendKey, LlmPolicies
from addons.readiness import parse_readiness_addr
from addons.config_settings import FrontendHttp, LlmModel, LlmParams, ProxyConfig

ConfigPath = tuple[str | int, ...]


def _all_but(model: type[BaseModel], *supported: str) -> frozenset[str]:
    aliases = {field.alias or name for name, field in model.model_fields.items()}
    missing = set(supported) - aliases
    assert not missing, f"{model.__name__} has no fields {missing}"
    return frozenset(aliases - set(supported))


_TRAFFIC_KINDS = (
    "oidc", "jwtAuth", "extAuthz", "extProc", "transformations", "basicAuth",
)

# Model class name -> the YAML keys of that model that meterway does not implement yet.
UNSUPPORTED: dict[str, frozenset[str]] = {
    "Gateway": frozenset({"workloads", "services", "backends", "routeGroups", "mcp"}),
    "ProxyConfig": _all_but(
        ProxyConfig, "database", "modelCatalog", "adminAddr", "statsAddr", "readinessAddr",
        "tracing", "metrics",
    ),
    # Both take CEL expressions, which meterway does not evaluate.
    "TracingConfig": frozenset({"fields"}),
    "MetricsConfig": frozenset({"remove", "fields"}),
    "FrontendPolicies": frozenset(
        {"tls", "tcp", "networkAuthorization", "proxyProtocol", "connect", "accessLog", "tracing"}
    ),
    "FrontendHttp": _all_but(FrontendHttp, "maxBufferSize"),
    "Bind": frozenset({"tunnelProtocol"}),
    "Listener": frozenset({"hostname", "tls", "tcpRoutes"}),
    "ListenerPolicies": frozenset(_TRAFFIC_KINDS),
    "Route": frozenset({"hostnames"}),
    "RoutePolicies": frozenset(
        {
            "requestHeaderModifier", "responseHeaderModifier", "requestRedirect", "urlRewrite",
            "requestMirror", "directResponse", "cors", "mcpAuthorization", "extMcp",
            "authorization", "mcpAuthentication", "a2a", "backendTLS", "backendTunnel",
            "localRateLimit", "remoteRateLimit", "csrf", "timeout", "retry",
            "oidc", "jwtAuth", "extAuthz", "transformations", "basicAuth",
        }
    ),
    "GatewayPolicies": frozenset(
        {
            "requestHeaderModifier", "responseHeaderModifier", "requestRedirect", "urlRewrite",
            "requestMirror", "directResponse", "cors", "mcpAuthorization", "extMcp",
            "authorization", "mcpAuthentication", "a2a", "ai", "backendTLS", "backendTunnel",
            "backendAuth", "localRateLimit", "remoteRateLimit", "csrf", "timeout", "retry",
            "oidc", "jwtAuth", "extAuthz", "transformations", "basicAuth",
        }
    ),
    "BackendPolicies": frozenset(
        {
            "requestHeaderModifier", "responseHeaderModifier", "requestRedirect",
            "transformations", "backendTLS", "backendTunnel", "http", "tcp", "health",
            "extAuthz", "mcpAuthorization", "extMcp", "a2a", "inferenceRouting",
        }
    ),
    "AiPolicy": frozenset(
        {"promptGuard", "defaults", "overrides", "transformations", "prompts", "promptCaching",
         "models"}
    ),
    "BackendAuth": frozenset({"passthrough", "gcp", "aws", "azure", "copilot"}),
    "BackendKey": frozenset({"location"}),
    "ExtProc": frozenset(
        {
            "service", "backend", "policies", "metadataContext", "requestAttributes",
            "responseAttributes", "attributes", "conditional",
        }
    ),
    "ApiKeys": frozenset({"location"}),
    "RouteBackend": frozenset(
        {"host", "service", "backend", "dynamic", "mcp", "aws", "routeGroup", "weight"}
    ),
    "AiBackend": frozenset({"tokenize", "groups"}),
    "AiProvider": frozenset({"vertex", "bedrock", "azure", "copilot", "custom"}),
    # `model` of openAI/gemini/anthropic: the router does not rewrite the model from here.
    "ProviderSettings": frozenset({"model"}),
    "Llm": frozenset({"providers", "virtualModels"}),
    "LlmPolicies": _all_but(LlmPolicies, "apiKey"),
    "LlmModel": _all_but(LlmModel, "name", "provider", "params"),
    "LlmParams": _all_but(LlmParams, "model", "apiKey", "baseUrl"),
    "PolicyTarget": frozenset({"route", "backend", "listenerSet"}),
    "GatewayTarget": frozenset({"listenerName", "port"}),
}

# A better next step than "remove it" for some fields, by (model class name, YAML key).
FIXES: dict[tuple[str, str], str] = {
    ("ListenerPolicies", "extProc"): (
        "move it to a top-level `policies:` entry with `phase: gateway`, or to a route's `policies:`"
    ),
    ("ProviderSettings", "model"): "set `policies.ai.modelAliases: {'*': MODEL}` instead",
    ("ExtProc", "service"): "give the server's address as `host: HOST:PORT`",
    ("ExtProc", "backend"): "give the server's address as `host: HOST:PORT`",
    ("AiProvider", "vertex"): "use `gemini` with a Gemini API key",
    ("LlmParams", "hostOverride"): "use `baseUrl`",
    ("LlmParams", "pathPrefix"): "use `baseUrl`",
}
DEFAULT_FIX = "serve this file with agentgateway"

# Values of `llm.models[].provider` that meterway implements.
LLM_PROVIDERS = frozenset({"openai", "openAI", "gemini", "anthropic"})


def sqlite_path_from_url(url: str) -> str:
    """Return PATH from `sqlite://PATH` (a `?query` is dropped); raise ValueError otherwise."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        raise ValueError(
            f"`{scheme}://` databases are not supported by meterway yet; "
            "use `sqlite://PATH` (PATH relative to this file)"
        )
    if not sep or scheme != "sqlite":
        raise ValueError(f"invalid database url {url!r}; use `sqlite://PATH`")
    path = rest.partition("?")[0]
    if path in ("", ":memory:") or path.startswith(":memory:"):
        raise ValueError(
            f"database url {url!r} names no file; the request log must outlive the process, "
            "so use `sqlite://PATH`, e.g. `sqlite://meterway.db`"
        )
    return path


def _is_unset(value: Any, default: Any) -> bool:
    return value is None or value == [] or value == {} or value == default


def _walk(model: BaseModel, path: ConfigPath) -> Iterator[tuple[BaseModel, str, Any, ConfigPath]]:
    """Yield (model, YAML key, value, path) for every field set in the file, depth first."""
    for name, field in type(model).model_fields.items():
        if name not in model.model_fields_set:
            continue
        value = getattr(model, name)
        key = field.alias or name
        yield model, key, value, path + (key,)
        if isinstance(value, BaseModel):
            yield from _walk(value, path + (key,))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _walk(item, path + (key, index))


def unsupported_problems(gateway: Gateway) -> list[tuple[ConfigPath, str]]:
    """Return (path, message) for each field or value that meterway does not implement yet."""
    problems: list[tuple[ConfigPath, str]] = []
    for index, policy in enumerate(gateway.policies):
        # Checked here because the default, `route`, is never "set in the file".
        if policy.phase != "gateway":
            problems.append(((("policies", index, "phase") if "phase" in policy.model_fields_set
                              else ("policies", index)),
                             "top-level policies with `phase: route` (the default) are not "
                             "supported by meterway yet; set `phase: gateway` or put the policy "
                             "under the route's `policies:`"))
    gateway_ext_procs = 0
    for model, key, value, path in _walk(gateway, ()):
        kind = type(model).__name__
        field = type(model).model_fields.get(_attribute(model, key))
        default = field.get_default(call_default_factory=True) if field else None
        if key in UNSUPPORTED.get(kind, ()) and not _is_unset(value, default):
            fix = FIXES.get((kind, key), DEFAULT_FIX)
            problems.append(
                (path, f"agentgateway's `{key}` is not supported by meterway yet; remove it or {fix}")
            )
            continue
        problems.extend(_value_problems(model, key, value, path))
        if isinstance(model, TopPolicy) and key == "policy" and value.ext_proc is not None:
            gateway_ext_procs += 1
            if gateway_ext_procs > 1:
                problems.append((path + ("extProc",), "a second gateway `extProc` policy is not "
                                 "supported by meterway yet; keep one"))
    return problems


def _attribute(model: BaseModel, key: str) -> str:
    for name, field in type(model).model_fields.items():
        if (field.alias or name) == key:
            return name
    return key


def _value_problems(model: BaseModel, key: str, value: Any, path: ConfigPath) -> list[tuple[ConfigPath, str]]:
    if isinstance(model, Listener) and key == "protocol" and value != "HTTP":
        return [(path, f"agentgateway's `protocol: {value}` is not supported by meterway yet; "
                 "use `HTTP` or remove it")]
    if isinstance(model, Route) and key == "backends" and len(value) > 1:
        return [(path, f"a route with {len(value)} backends is not supported by meterway yet "
                 "(agentgateway splits traffic by weight); keep one backend per route")]
    if isinstance(model, LlmModel) and key == "provider":
        if isinstance(value, dict) or value not in LLM_PROVIDERS:
            shown = "custom" if isinstance(value, dict) else value
            known = ", ".join(sorted(LLM_PROVIDERS))
            return [(path, f"llm provider `{shown}` is not supported by meterway yet; use one of "
                     f"{known} (an OpenAI-compatible server: `openai` with `params.baseUrl`)")]
    if isinstance(model, ProxyConfig) and key == "statsAddr":
        try:
            parse_stats_addr(value)
        except ValueError as error:
            return [(path, str(error))]
    if isinstance(model, ProxyConfig) and key == "readinessAddr":
        try:
            parse_readiness_addr(value)
        except ValueError as error:
            return [(path, str(error))]
    if isinstance(model, ProxyConfig) and key == "database":
        try:
            sqlite_path_from_url(value.url)
        except ValueError as error:
            return [(path + ("url",), str(error))]
    return []


def secret_strings(gateway: Gateway) -> set[str]:
    """Return the inline secrets in the config: backend keys, client keys and LLM API keys."""
    found: set[str] = set()
    for model, key, value, _path in _walk(gateway, ()):
        if not isinstance(value, str) or not value:
            continue
        if isinstance(model, (BackendAuth, ApiKeyEntry)) and key == "key":
            found.add(value)
        elif isinstance(model, BackendKey) and key == "value":
            found.add(value)
        elif isinstance(model, LlmParams) and key == "apiKey":
            found.add(value)
    # Header values of exporters and webhooks often carry tokens.
    for model, key, value, _path in _walk(gateway, ()):
        if isinstance(model, (TracingConfig, Webhook)) and key == "headers":
            found.update(v for v in value.values() if v)
    return found


def secret_files(gateway: Gateway) -> list[tuple[ConfigPath, str]]:
    """Return (path, file) of each secret given as `{file: PATH}`."""
    found: list[tuple[ConfigPath, str]] = []
    for model, key, value, path in _walk(gateway, ()):
        if isinstance(model, (BackendKey, LlmParams)) and key in ("value", "apiKey"):
            file = getattr(value, "file", None)
            if file is not None:
                found.append((path, file))
    return found
