"""pydantic models of agentgateway's standalone config file, as meterway reads it.

The YAML keys are agentgateway's camelCase names (v1.3-era schema); the attributes are their
snake_case forms. `Gateway` is the root. Load a file with `addons.config_load.load_config`,
which also rejects the fields that meterway does not implement yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from addons.config_base import ConfigModel, FileRef, Opaque, exactly_one
from addons.config_policies import (
    BackendAuth,
    BackendPolicies,
    ExtProc,
    GatewayPolicies,
    ListenerPolicies,
    RoutePolicies,
)
from addons.config_settings import (
    DEFAULT_LLM_PORT,
    FrontendPolicies,
    Llm,
    MeterwaySettings,
    ProxyConfig,
)

# The database file used when the config has no `config.database`.
DEFAULT_DATABASE_NAME = "meterway.db"


class StringMatch(ConfigModel):
    """A header or query value match: exactly one of `exact` or `regex`."""

    exact: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _check_one(self) -> StringMatch:
        exactly_one(self, ("exact", "regex"), "value")
        return self


class PathMatch(ConfigModel):
    """A path match: exactly one of `exact`, `pathPrefix` or `regex`."""

    exact: str | None = None
    path_prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _check_one(self) -> PathMatch:
        exactly_one(self, ("exact", "path_prefix", "regex"), "path")
        return self


class HeaderMatch(ConfigModel):
    """A request header that must be present with a matching value."""

    name: str
    value: StringMatch


class QueryMatch(ConfigModel):
    """A query parameter that must be present with a matching value."""

    name: str
    value: StringMatch


class RouteMatch(ConfigModel):
    """One way a request can match a route; every condition given must hold."""

    headers: list[HeaderMatch] = Field(default_factory=list)
    # None matches every path, like agentgateway's default `pathPrefix: /`.
    path: PathMatch | None = None
    method: str | None = None
    query: list[QueryMatch] = Field(default_factory=list)


class ProviderSettings(ConfigModel):
    """Settings of an `openAI`, `gemini`, `anthropic` or `copilot` provider."""

    model: str | None = None


class VertexSettings(ProviderSettings):
    """Settings of a `vertex` provider."""

    region: str | None = None
    project_id: str


class BedrockSettings(ProviderSettings):
    """Settings of a `bedrock` provider."""

    region: str
    guardrail_identifier: str | None = None
    guardrail_version: str | None = None


class AzureSettings(ProviderSettings):
    """Settings of an `azure` provider."""

    resource_name: str
    resource_type: Literal["openAI", "foundry"]
    api_version: str | None = None
    project_name: str | None = None


class CustomSettings(ProviderSettings):
    """Settings of a `custom` provider."""

    formats: list[Opaque]


class AiProvider(ConfigModel):
    """The LLM provider of an `ai` backend: exactly one key is set."""

    open_ai: ProviderSettings | None = Field(default=None, alias="openAI")
    gemini: ProviderSettings | None = None
    vertex: VertexSettings | None = None
    anthropic: ProviderSettings | None = None
    bedrock: BedrockSettings | None = None
    azure: AzureSettings | None = None
    copilot: ProviderSettings | None = None
    custom: CustomSettings | None = None

    @model_validator(mode="after")
    def _check_one(self) -> AiProvider:
        exactly_one(self, tuple(type(self).model_fields), "provider")
        return self

    @property
    def kind(self) -> str:
        """The provider key as spelled in YAML: `openAI`, `gemini`, `anthropic`, ..."""
        for name, field in type(self).model_fields.items():
            if getattr(self, name) is not None:
                return field.alias or name
        raise ValueError("provider: no provider is set")

    @property
    def settings(self) -> ProviderSettings:
        """The settings object of the provider that is set."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                return value
        raise ValueError("provider: no provider is set")


class AiBackend(ConfigModel):
    """An `ai` backend: one named LLM provider (or priority `groups`, not supported yet)."""

    name: str | None = None
    provider: AiProvider | None = None
    # host[:port] that replaces the provider's default host, e.g. `localhost:11434`.
    host_override: str | None = None
    # Path that replaces the request's path.
    path_override: str | None = None
    # Base path that replaces the provider's default prefix, e.g. `/v1`.
    path_prefix: str | None = None
    tokenize: bool = False
    policies: BackendPolicies | None = None
    groups: list[Opaque] | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> AiBackend:
        if self.groups is None and (self.name is None or self.provider is None):
            raise ValueError("ai: set `name` and `provider` (or `groups`)")
        return self

    @property
    def provider_kind(self) -> str:
        """The provider key as spelled in YAML: `openAI`, `gemini`, `anthropic`, ..."""
        if self.provider is None:
            raise ValueError(f"ai backend {self.name!r} has no provider")
        return self.provider.kind


BACKEND_KINDS = ("ai", "host", "service", "backend", "dynamic", "mcp", "aws", "route_group")


class RouteBackend(ConfigModel):
    """One `backends[]` entry of a route: exactly one backend kind plus its policies."""

    weight: int = Field(default=1, ge=0)
    policies: BackendPolicies | None = None
    ai: AiBackend | None = None
    host: str | None = None
    service: Opaque | None = None
    backend: str | None = None
    dynamic: Opaque | None = None
    mcp: Opaque | None = None
    aws: Opaque | None = None
    route_group: str | None = None

    @model_validator(mode="after")
    def _check_one(self) -> RouteBackend:
        exactly_one(self, BACKEND_KINDS, "backends[]")
        return self


class Route(ConfigModel):
    """An HTTP route: the requests it matches, its policies and its backends."""

    name: str | None = None
    namespace: str | None = None
    rule_name: str | None = None
    hostnames: list[str] = Field(default_factory=list)
    # Empty: the route matches every request (a fallback).
    matches: list[RouteMatch] = Field(default_factory=list)
    policies: RoutePolicies | None = None
    backends: list[RouteBackend] = Field(default_factory=list)


class Listener(ConfigModel):
    """A listener on a bind: its routes and policies."""

    name: str | None = None
    namespace: str | None = None
    hostname: str | None = None
    protocol: Literal["HTTP", "HTTPS", "TLS", "TCP", "HBONE"] | None = None
    tls: Opaque | None = None
    routes: list[Route] = Field(default_factory=list)
    tcp_routes: list[Opaque] | None = None
    policies: ListenerPolicies | None = None


class Bind(ConfigModel):
    """A port the gateway listens on."""

    port: int = Field(ge=0, le=65535)
    listeners: list[Listener]
    tunnel_protocol: str | None = None


class ResourceName(ConfigModel):
    """The `name` of a top-level policy."""

    name: str
    namespace: str


class GatewayTarget(ConfigModel):
    """A policy target naming the gateway (and optionally one listener or port)."""

    gateway_name: str
    gateway_namespace: str
    listener_name: str | None = None
    port: int | None = None


class PolicyTarget(ConfigModel):
    """What a top-level policy attaches to: exactly one key."""

    gateway: GatewayTarget | None = None
    route: Opaque | None = None
    backend: Opaque | None = None
    listener_set: Opaque | None = None

    @model_validator(mode="after")
    def _check_one(self) -> PolicyTarget:
        exactly_one(self, ("gateway", "route", "backend", "listener_set"), "target")
        return self


class TopPolicy(ConfigModel):
    """A top-level `policies[]` entry. `phase: gateway` runs before route selection."""

    name: ResourceName
    target: PolicyTarget
    phase: Literal["route", "gateway"] = "route"
    policy: GatewayPolicies


class Gateway(ConfigModel):
    """The whole config file. `load_config` fills `source` and `secret_values`."""

    config: ProxyConfig | None = None
    binds: list[Bind] = Field(default_factory=list)
    frontend_policies: FrontendPolicies | None = None
    policies: list[TopPolicy] = Field(default_factory=list)
    workloads: list[Opaque] | None = None
    services: list[Opaque] | None = None
    backends: list[Opaque] | None = None
    route_groups: list[Opaque] | None = None
    llm: Llm | None = None
    mcp: Opaque | None = None
    meterway: MeterwaySettings = Field(default_factory=MeterwaySettings)

    _source: Path | None = PrivateAttr(default=None)
    _secret_values: frozenset[str] = PrivateAttr(default_factory=frozenset)
    # Contents of secret files (`{file: PATH}` keys), read once at load time, by resolved path.
    _file_secrets: dict[Path, str] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> Path:
        """The config file this gateway was loaded from (`<inline>` in the working folder
        for a model built in code)."""
        return self._source or Path.cwd() / "<inline>"

    @property
    def secret_values(self) -> frozenset[str]:
        """Secrets the config holds after `$VAR` expansion (backend keys, client keys, LLM API
        keys), for redaction. Never serialised or shown in repr."""
        return self._secret_values

    def resolve_path(self, path: str | Path) -> Path:
        """Resolve `path` against the config file's folder (absolute paths stay as they are)."""
        return (self.source.parent / Path(path).expanduser()).resolve()

    def database_path(self) -> Path | None:
        """Return the SQLite file of the request log.

        `config.database.url: sqlite://PATH` gives PATH relative to the config file. Without
        `config.database` the log is `meterway.db` beside the config file. Returns None only
        for a model built in code without a source file; raises ValueError for a URL that
        meterway cannot use (postgres, `:memory:`), which `load_config` reports at load time.
        """
        from addons.config_support import sqlite_path_from_url

        database = self.config.database if self.config else None
        if database is None:
            return None if self._source is None else self.resolve_path(DEFAULT_DATABASE_NAME)
        return self.resolve_path(sqlite_path_from_url(database.url))

    def catalog_paths(self) -> list[Path]:
        """Return the `config.modelCatalog[].file` paths in order (later ones win)."""
        entries = self.config.model_catalog if self.config else []
        return [self.resolve_path(e.file) for e in entries if e.file is not None]

    def listener_ports(self) -> list[int]:
        """Return the `binds[].port` values in file order (the `llm:` port is `llm_port()`)."""
        return [bind.port for bind in self.binds]

    def llm_port(self) -> int | None:
        """Return the port of the `llm:` proxy (4000 by default), or None without `llm:`."""
        if self.llm is None:
            return None
        return self.llm.port if self.llm.port is not None else DEFAULT_LLM_PORT

    def gateway_ext_proc(self) -> ExtProc | None:
        """Return the `extProc` of the top-level `phase: gateway` policy, or None."""
        for policy in self.policies:
            if policy.phase == "gateway" and policy.policy.ext_proc is not None:
                return policy.policy.ext_proc
        return None

    def secret_text(self, value: str | FileRef) -> str:
        """Return a secret given inline or as `{file: PATH}` (read when the config loaded)."""
        if isinstance(value, str):
            return value
        path = self.resolve_path(value.file)
        if path not in self._file_secrets:
            raise ValueError(f"secret file {path} was not read when the config loaded")
        return self._file_secrets[path]

    def backend_key(self, auth: BackendAuth | None) -> str | None:
        """Return the key of a `backendAuth` policy (string or object form), or None."""
        if auth is None or auth.key is None:
            return None
        if isinstance(auth.key, str):
            return auth.key
        return self.secret_text(auth.key.value)
