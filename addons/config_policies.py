"""Policy models: agentgateway's `policies:` blocks on listeners, routes, backends and `llm`.

Field names follow agentgateway's standalone schema (v1.3 era). Policy kinds that meterway
implements are modelled in full. The others are kept as plain data (`Opaque`), so the loader
can still name them in its "not supported yet" errors (see addons/config_support.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from addons.config_base import ConfigModel, FileRef, Opaque, exactly_one

BodyMode = Literal["none", "buffered", "bufferedPartial", "fullDuplexStreamed"]
SendMode = Literal["send", "skip"]
FailureMode = Literal["failClosed", "failOpen"]
# agentgateway's `ai.routes` values: what kind of API a path suffix carries.
RouteType = Literal[
    "completions",
    "messages",
    "models",
    "passthrough",
    "detect",
    "responses",
    "embeddings",
    "realtime",
    "anthropicTokenCount",
]


class HeaderModifier(ConfigModel):
    """Headers to add, set or remove."""

    add: dict[str, str] = Field(default_factory=dict)
    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class AiPolicy(ConfigModel):
    """The `ai` policy: marks traffic as LLM traffic and rewrites it."""

    prompt_guard: Opaque | None = None
    defaults: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None
    transformations: dict[str, str] | None = None
    prompts: Opaque | None = None
    # Requested model -> model sent upstream. Keys may hold `*` wildcards; the most
    # specific key wins, as in agentgateway.
    model_aliases: dict[str, str] = Field(default_factory=dict)
    prompt_caching: Opaque | None = None
    # Path suffix -> API kind, for example `/v1/responses: responses`.
    routes: dict[str, RouteType] = Field(default_factory=dict)
    # Models listed by `GET /v1/models`.
    models: list[Opaque] | None = None

    @field_validator("routes", mode="before")
    @classmethod
    def _camel_case_route_types(cls, value: Any) -> Any:
        # agentgateway's examples also spell the kinds in PascalCase (`Completions`).
        if isinstance(value, dict):
            return {k: v[:1].lower() + v[1:] if isinstance(v, str) else v for k, v in value.items()}
        return value


class BackendKey(ConfigModel):
    """The object form of `backendAuth.key`: an inline value or `{file: PATH}`."""

    value: str | FileRef = Field(repr=False)
    location: Opaque | None = None


class BackendAuth(ConfigModel):
    """Credentials the gateway sends upstream: exactly one method."""

    # A plain string is the key itself; agentgateway sends it as `Authorization: Bearer`.
    # Secrets are left out of repr() so that logging a model never shows them.
    key: str | BackendKey | None = Field(default=None, repr=False)
    passthrough: Opaque | None = None
    gcp: Opaque | None = None
    aws: Opaque | None = None
    azure: Opaque | None = None
    # agentgateway also accepts the bare string `copilot`; it is stored as `copilot: true`.
    copilot: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_copilot(cls, data: Any) -> Any:
        if data == "copilot":
            return {"copilot": True}
        return data

    @model_validator(mode="after")
    def _check_one(self) -> BackendAuth:
        exactly_one(self, ("key", "passthrough", "gcp", "aws", "azure", "copilot"), "backendAuth")
        return self


class ProcessingOptions(ConfigModel):
    """The parts of a request and response that agentgateway sends to the ext_proc server."""

    request_body_mode: BodyMode = "fullDuplexStreamed"
    response_body_mode: BodyMode = "fullDuplexStreamed"
    request_header_mode: SendMode = "send"
    response_header_mode: SendMode = "send"
    request_trailer_mode: SendMode = "send"
    response_trailer_mode: SendMode = "send"
    # Lets the ext_proc server's `mode_override` change the later phases of one exchange.
    allow_mode_override: bool = False


class ExtProc(ConfigModel):
    """The `extProc` policy: an Envoy external processor called over gRPC.

    agentgateway has no timeout field here; meterway takes its message timeout from
    `meterway.extProc.messageTimeout`.
    """

    host: str | None = None
    service: Opaque | None = None
    backend: str | None = None
    policies: Opaque | None = None
    failure_mode: FailureMode = "failClosed"
    metadata_context: Opaque | None = None
    request_attributes: dict[str, str] | None = None
    response_attributes: dict[str, str] | None = None
    attributes: Opaque | None = None
    processing_options: ProcessingOptions = Field(default_factory=ProcessingOptions)
    conditional: list[Opaque] | None = None

    @model_validator(mode="after")
    def _check_target(self) -> ExtProc:
        if self.conditional is None:
            exactly_one(self, ("host", "service", "backend"), "extProc")
        return self


class ApiKeyEntry(ConfigModel):
    """One client key: the key itself, or its `sha256:` hash, plus optional metadata."""

    key: str | None = Field(default=None, repr=False)
    key_hash: str | None = None
    metadata: Any = None

    @model_validator(mode="after")
    def _check_one(self) -> ApiKeyEntry:
        exactly_one(self, ("key", "key_hash"), "apiKey.keys[]")
        return self


class ApiKeys(ConfigModel):
    """The `apiKey` policy: client keys the gateway accepts."""

    keys: list[ApiKeyEntry]
    mode: Literal["strict", "optional", "permissive"] = "optional"
    location: Opaque | None = None


class _TrafficPolicies(ConfigModel):
    """The policy kinds that listeners, routes and `llm` share."""

    oidc: Opaque | None = None
    jwt_auth: Opaque | None = None
    ext_authz: Opaque | None = None
    ext_proc: ExtProc | None = None
    transformations: Opaque | None = None
    basic_auth: Opaque | None = None
    api_key: ApiKeys | None = None


class ListenerPolicies(_TrafficPolicies):
    """Policies on a listener (`binds[].listeners[].policies`)."""


class LlmPolicies(_TrafficPolicies):
    """Policies on the `llm:` proxy, applied before a model is chosen."""

    authorization: Opaque | None = None
    local_rate_limit: list[Opaque] = Field(default_factory=list)
    remote_rate_limit: Opaque | None = None


class RoutePolicies(_TrafficPolicies):
    """Policies on a route (agentgateway's FilterOrPolicy)."""

    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: Opaque | None = None
    url_rewrite: Opaque | None = None
    request_mirror: Opaque | None = None
    direct_response: Opaque | None = None
    cors: Opaque | None = None
    mcp_authorization: Opaque | None = None
    ext_mcp: Opaque | None = None
    authorization: Opaque | None = None
    mcp_authentication: Opaque | None = None
    a2a: Opaque | None = Field(default=None, alias="a2a")
    ai: AiPolicy | None = None
    backend_tls: Opaque | None = Field(default=None, alias="backendTLS")
    backend_tunnel: Opaque | None = None
    backend_auth: BackendAuth | None = None
    # A list of limits, or `{conditional: [...]}`.
    local_rate_limit: list[Opaque] | Opaque | None = None
    remote_rate_limit: Opaque | None = None
    csrf: Opaque | None = None
    timeout: Opaque | None = None
    retry: Opaque | None = None


class GatewayPolicies(RoutePolicies):
    """The `policy` of a top-level `policies[]` entry; same keys as route policies."""


class BackendPolicies(ConfigModel):
    """Policies on a backend (`backends[].policies` and `backends[].ai.policies`)."""

    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: Opaque | None = None
    transformations: Opaque | None = None
    backend_tls: Opaque | None = Field(default=None, alias="backendTLS")
    backend_auth: BackendAuth | None = None
    backend_tunnel: Opaque | None = None
    http: Opaque | None = None
    tcp: Opaque | None = None
    health: Opaque | None = None
    ext_authz: Opaque | None = None
    mcp_authorization: Opaque | None = None
    ext_mcp: Opaque | None = None
    a2a: Opaque | None = Field(default=None, alias="a2a")
    inference_routing: Opaque | None = None
    ai: AiPolicy | None = None
