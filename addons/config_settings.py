"""Config models for the process-wide sections: `config:`, `frontendPolicies:`, `llm:`, `meterway:`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from addons.config_base import ConfigModel, FileRef, Opaque, exactly_one
from addons.config_monitoring import MeterwayAlerts, MetricsConfig, TracingConfig, stats_addr_text
from addons.config_policies import LlmPolicies

# agentgateway's default for `frontendPolicies.http.maxBufferSize` (2 MiB).
DEFAULT_MAX_BUFFER_SIZE = 2 * 1024 * 1024
# agentgateway's default port for the `llm:` proxy.
DEFAULT_LLM_PORT = 4000


class Database(ConfigModel):
    """`config.database`: where the request log lives."""

    # `sqlite://PATH` (PATH relative to the config file); postgres is not supported yet.
    url: str


class CatalogEntry(ConfigModel):
    """One `config.modelCatalog[]` entry: a price catalog file or an inline catalog."""

    file: str | None = None
    inline: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_one(self) -> CatalogEntry:
        exactly_one(self, ("file", "inline"), "modelCatalog[]")
        return self


class ProxyConfig(ConfigModel):
    """The top-level `config:` section."""

    enable_ipv6: bool | None = None
    dns: Opaque | None = None
    local_xds_path: str | None = None
    ca_address: str | None = None
    ca_auth_token: str | None = None
    xds_address: str | None = None
    xds_auth_token: str | None = None
    namespace: str | None = None
    gateway: str | None = None
    trust_domain: str | None = None
    additional_trust_domains: str | None = None
    skip_validate_trust_domain: bool | None = None
    service_account: str | None = None
    cluster_id: str | None = None
    network: str | None = None
    # Accepted for compatibility; meterway serves no admin endpoint.
    admin_addr: str | None = None
    # Where `/metrics` is served: HOST:PORT or `off`; unset is 127.0.0.1:15020.
    stats_addr: Annotated[str | None, BeforeValidator(stats_addr_text)] = None
    # Where `GET /healthz/ready` is served: HOST:PORT or `off`; unset is 127.0.0.1:15021.
    readiness_addr: Annotated[str | None, BeforeValidator(stats_addr_text)] = None
    session: Opaque | None = None
    mcp: Opaque | None = None
    connection_termination_deadline: str | None = None
    connection_min_termination_deadline: str | None = None
    worker_threads: str | int | None = None
    tracing: TracingConfig | None = None
    logging: Opaque | None = None
    metrics: MetricsConfig | None = None
    backend: Opaque | None = None
    hbone: Opaque | None = None
    database: Database | None = None
    # Later entries override earlier ones, as in agentgateway.
    model_catalog: list[CatalogEntry] = Field(default_factory=list)


class FrontendHttp(ConfigModel):
    """`frontendPolicies.http`: limits on incoming HTTP requests."""

    # Largest request body the gateway buffers, in bytes.
    max_buffer_size: int = Field(default=DEFAULT_MAX_BUFFER_SIZE, ge=0)
    http1_max_headers: int | None = None
    http1_idle_timeout: str | None = None
    http1_header_case: str | None = None
    http2_window_size: int | None = None
    http2_connection_window_size: int | None = None
    http2_frame_size: int | None = None
    http2_max_header_size: int | None = None
    http2_keepalive_interval: str | None = None
    http2_keepalive_timeout: str | None = None
    max_connection_duration: str | None = None


class FrontendPolicies(ConfigModel):
    """The top-level `frontendPolicies:` section."""

    http: FrontendHttp | None = None
    tls: Opaque | None = None
    tcp: Opaque | None = None
    network_authorization: Opaque | None = None
    proxy_protocol: Opaque | None = None
    connect: Opaque | None = None
    access_log: Opaque | None = None
    tracing: Opaque | None = None


class LlmParams(ConfigModel):
    """`llm.models[].params`: how the request to the provider is built."""

    # Model sent upstream; unset forwards the client's model unchanged.
    model: str | None = None
    # Unset: agentgateway reads the provider's usual environment variable.
    api_key: str | FileRef | None = Field(default=None, repr=False)
    aws_region: str | None = None
    vertex_region: str | None = None
    vertex_project: str | None = None
    azure_resource_name: str | None = None
    azure_resource_type: str | None = None
    azure_api_version: str | None = None
    azure_project_name: str | None = None
    base_url: str | None = None
    host_override: str | None = None
    path_override: str | None = None
    path_prefix: str | None = None
    tokenize: bool = False


class LlmModel(ConfigModel):
    """One `llm.models[]` entry: a model name clients may request and where it goes."""

    # The requested model this entry matches; `*` may start or end it.
    name: str
    # A provider id such as `openai`, `gemini` or `anthropic`, or `{custom: ...}`.
    provider: str | Opaque
    params: LlmParams = Field(default_factory=LlmParams)
    defaults: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None
    transformation: dict[str, str] | None = None
    request_headers: Opaque | None = None
    response_headers: Opaque | None = None
    tls: Opaque | None = None
    auth: Opaque | str | None = None
    health: Opaque | None = None
    backend_tunnel: Opaque | None = None
    guardrails: Opaque | None = None
    matches: list[Opaque] | None = None


class Llm(ConfigModel):
    """The top-level `llm:` section: a model-name based LLM proxy on its own port."""

    port: int | None = Field(default=None, ge=0, le=65535)
    models: list[LlmModel] = Field(default_factory=list)
    # NOTE: the shapes of `providers[]` and `virtualModels[]` are not modelled; a non-empty
    # list is rejected as not supported yet.
    providers: list[Any] = Field(default_factory=list)
    virtual_models: list[Any] = Field(default_factory=list)
    policies: LlmPolicies | None = None


class MeterwayExtProc(ConfigModel):
    """`meterway.extProc`: meterway's settings for calling an ext_proc server."""

    # Seconds to wait for each ext_proc reply. Generous on purpose: a router on a slow CPU
    # must not fail open by accident. Envoy's default of 200 ms would.
    message_timeout: float = Field(default=60.0, gt=0)


class MeterwayPayloads(ConfigModel):
    """`meterway.payloads`: what the request log keeps of request and response bodies."""

    # False keeps metadata (tokens, cost, timings) and no bodies.
    store: bool = True
    # Largest body stored per request or response, in bytes; longer ones are truncated.
    max_bytes: int = Field(default=1024 * 1024, ge=0)


class MeterwayRetention(ConfigModel):
    """`meterway.retention`: how long the request log keeps rows, and how large it may grow."""

    # Rows older than this many days are deleted with their payloads; unset keeps them all.
    days: float | None = Field(default=None, gt=0)
    # Bodies are deleted oldest first while the database file is larger than this, in bytes.
    max_database_bytes: int | None = Field(default=None, gt=0)


class MeterwaySettings(ConfigModel):
    """The top-level `meterway:` section. agentgateway rejects this key, so a file that
    sets it is meterway's own."""

    ext_proc: MeterwayExtProc = Field(default_factory=MeterwayExtProc)
    payloads: MeterwayPayloads = Field(default_factory=MeterwayPayloads)
    alerts: MeterwayAlerts = Field(default_factory=MeterwayAlerts)
    retention: MeterwayRetention = Field(default_factory=MeterwayRetention)
    # Address the listeners bind to.
    listen_address: str = "127.0.0.1"
    # Seconds to wait for an upstream's response headers before answering 504. A stream's
    # length is not bounded by it, only the wait for it to start. Five minutes by default,
    # because a long reasoning answer that is not streamed starts only when it is complete.
    upstream_timeout: float = Field(default=300.0, gt=0)
    # Seconds that requests in flight may take to finish after SIGTERM or Ctrl-C.
    drain_timeout: float = Field(default=10.0, ge=0)
