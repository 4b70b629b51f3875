"""Config models for what a bind serves: listeners, routes, matches and backends."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from addons.config_base import ConfigModel, Opaque, exactly_one
from addons.config_policies import BackendPolicies, ListenerPolicies, RoutePolicies


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
