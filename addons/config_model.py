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
from addons.config_policies import BackendAuth, ExtProc, GatewayPolicies
from addons.config_routes import (  # noqa: F401 (re-exported: the contract names them here)
    BACKEND_KINDS,
    AiBackend,
    AiProvider,
    AzureSettings,
    BedrockSettings,
    Bind,
    CustomSettings,
    HeaderMatch,
    Listener,
    PathMatch,
    ProviderSettings,
    QueryMatch,
    Route,
    RouteBackend,
    RouteMatch,
    StringMatch,
    VertexSettings,
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
