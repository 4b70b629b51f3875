"""The config addon: loads the gateway YAML and opens the listeners it names.

mitmproxy honours a `mode` change only once it is running, so the listeners are applied in
`running()` and again after every reload. Each listener is a reverse-mode server whose target
is a placeholder: the router sets every request's upstream itself, and
`connection_strategy=lazy` keeps mitmproxy from connecting to the placeholder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions

from addons.config_load import ConfigError, load_config
from addons.reload import ConfigWatcher

logger = logging.getLogger(__name__)

# Requests are never sent here: the router always chooses the upstream before mitmproxy
# connects. Port 9 is the discard service, so a stray connection fails at once.
PLACEHOLDER_TARGET = "http://127.0.0.1:9"


@dataclass(frozen=True)
class MappedUpstream:
    scheme: str
    host: str
    port: int


@dataclass(frozen=True)
class Listener:
    port: int
    kind: str  # "bind" for binds[].port, "llm" for llm.port
    bind: Any | None  # the config model's Bind for kind "bind"


def parse_upstream_map(entries: Sequence[str]) -> dict[str, MappedUpstream]:
    """Parse `host:port=URL` entries of the meterway_upstream option."""
    mapping: dict[str, MappedUpstream] = {}
    for entry in entries:
        source, sep, url = entry.partition("=")
        parts = urlsplit(url)
        if not sep or ":" not in source or parts.scheme not in ("http", "https") or not parts.hostname:
            raise exceptions.OptionsError(
                f"meterway_upstream entry {entry!r} is invalid: write HOST:PORT=URL, "
                "for example api.openai.com:443=http://127.0.0.1:9001"
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        mapping[source.lower()] = MappedUpstream(parts.scheme, parts.hostname, port)
    return mapping


class Config:
    """Holds the parsed gateway config and the listeners derived from it."""

    def __init__(self) -> None:
        self.gateway: Any | None = None
        self.upstream_map: dict[str, MappedUpstream] = {}
        self.listeners: dict[int, Listener] = {}
        self.secrets: frozenset[str] = frozenset()
        self.llm_keys: dict[str, str] = {}
        self._running = False
        self._reload_callbacks: list[Any] = []
        self._watcher: ConfigWatcher | None = None
        # Counts successful reloads after the first load, for tests and the readiness page.
        self.reloads = 0

    def load(self, loader: Any) -> None:
        loader.add_option(
            "meterway_config", str, "",
            "Path of the gateway config file, in agentgateway's standalone YAML format.",
        )
        loader.add_option(
            "meterway_upstream", Sequence[str], [],
            "Map an upstream to another URL, as HOST:PORT=URL; it applies to provider hosts "
            "and hostOverride values alike, for example api.openai.com:443=http://127.0.0.1:9001.",
        )
        loader.add_option(
            "meterway_listen_host", str, "",
            "Address the gateway's listeners bind to. Empty means the config's "
            "meterway.listenAddress, which defaults to 127.0.0.1.",
        )
        loader.add_option(
            "meterway_worker", str, "",
            "K/N when this process is worker K (from 0) of N started by `meterway run --workers N`; "
            "empty for a single gateway process.",
        )
        loader.add_option(
            "meterway_stats_addr", str, "",
            "HOST:PORT for the metrics endpoint instead of config.statsAddr; `meterway run "
            "--workers` gives each worker a private one and serves their sum on statsAddr.",
        )
        loader.add_option(
            "meterway_readiness_addr", str, "",
            "HOST:PORT for the readiness probe instead of config.readinessAddr, as for metrics.",
        )

    @property
    def worker(self) -> tuple[int, int]:
        """Return (index, count) of this gateway process among `meterway run --workers` ones."""
        try:
            text = ctx.options.meterway_worker
        except (AttributeError, KeyError):  # outside a running master, as in unit tests
            return 0, 1
        index, _, count = text.partition("/")
        if not text:
            return 0, 1
        return int(index), int(count)

    def address_override(self, name: str) -> str | None:
        """Return the `meterway_stats_addr` or `meterway_readiness_addr` option, if set."""
        try:
            return getattr(ctx.options, f"meterway_{name}_addr") or None
        except (AttributeError, KeyError):
            return None

    def on_reload(self, callback: Any) -> None:
        """Register a function called with the new gateway after each successful load."""
        self._reload_callbacks.append(callback)

    def configure(self, updated: set[str]) -> None:
        if "meterway_upstream" in updated:
            self.upstream_map = parse_upstream_map(ctx.options.meterway_upstream)
        if "meterway_config" in updated and ctx.options.meterway_config:
            self._load(Path(ctx.options.meterway_config))
        if updated & {"meterway_config", "meterway_listen_host", "mode"} and self.gateway is not None:
            self.apply_listeners()

    def _load(self, path: Path) -> None:
        try:
            gateway = load_config(path)
        except ConfigError as err:
            raise exceptions.OptionsError(str(err)) from None
        except OSError as err:
            raise exceptions.OptionsError(
                f"cannot read the gateway config {path}: {err.strerror}; check the path"
            ) from None
        self._install(gateway, path)
        # The proxy only connects upstream after the router has chosen where to go.
        ctx.options.update(connection_strategy="lazy")

    def _install(self, gateway: Any, path: Path) -> None:
        """Make a validated config the one in force and tell the other addons about it."""
        listeners = self._listeners_of(gateway)
        self.gateway = gateway
        self.listeners = listeners
        self.llm_keys = self._llm_keys_of(gateway)
        self.secrets = frozenset(gateway.secret_values) | frozenset(self.llm_keys.values())
        logger.info("loaded gateway config %s: listeners on ports %s", path,
                    ", ".join(str(p) for p in sorted(self.listeners)))
        for callback in self._reload_callbacks:
            callback(gateway)

    def reload(self) -> bool:
        """Load the config file again and put it in force; return False when it was rejected.

        A file that fails to load leaves the previous config in force and logs every problem,
        so a half-finished edit never takes the gateway down.
        """
        path = Path(ctx.options.meterway_config)
        try:
            gateway = load_config(path)
            self._listeners_of(gateway)
        except ConfigError as err:
            logger.error("config %s not reloaded, %d problem(s); the previous config stays in force:\n%s",
                         path, len(err.problems), "\n".join(f"  {problem}" for problem in err.problems))
            return False
        except exceptions.OptionsError as err:
            logger.error("config %s not reloaded; the previous config stays in force: %s", path, err)
            return False
        except OSError as err:
            logger.error("config %s not reloaded: cannot read it (%s); the previous config stays in force",
                         path, err.strerror)
            return False
        self._install(gateway, path)
        self.reloads += 1
        if self._running:
            self.apply_listeners()
        return True

    @staticmethod
    def _listeners_of(gateway: Any) -> dict[int, Listener]:
        listeners: dict[int, Listener] = {}
        for bind in gateway.binds or ():
            listeners[bind.port] = Listener(bind.port, "bind", bind)
        llm_port = gateway.llm_port()
        if llm_port:
            if llm_port in listeners:
                raise exceptions.OptionsError(
                    f"llm.port {llm_port} is also a binds[].port; give the llm "
                    "listener a port of its own (agentgateway's default is 4000)"
                )
            listeners[llm_port] = Listener(llm_port, "llm", None)
        return listeners

    @staticmethod
    def _llm_keys_of(gateway: Any) -> dict[str, str]:
        """Read the provider keys that `llm.models[]` take from the environment."""
        keys: dict[str, str] = {}
        if gateway.llm is None:
            return keys
        for variable in ("OPENAI_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_API_KEY"):
            value = os.environ.get(variable)
            if value:
                keys[variable] = value
        return keys

    def listen_host(self) -> str:
        """Return the address the listeners bind to."""
        if ctx.options.meterway_listen_host:
            return ctx.options.meterway_listen_host
        section = getattr(self.gateway, "meterway", None)
        return getattr(section, "listen_address", None) or "127.0.0.1"

    def modes(self) -> list[str]:
        """Return mitmproxy mode specs for every configured listener."""
        host = self.listen_host()
        host_part = f"[{host}]" if ":" in host else host
        return [f"reverse:{PLACEHOLDER_TARGET}@{host_part}:{port}" for port in sorted(self.listeners)]

    def apply_listeners(self) -> None:
        """Replace mitmproxy's listeners with the ones the config names."""
        if not self.listeners:
            return
        modes = self.modes()
        if list(ctx.options.mode) != modes:
            ctx.options.update(mode=modes)
        host = self.listen_host()
        if host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning(
                "listeners bind to %s, beyond loopback: anyone who reaches this address can "
                "use the configured provider keys unless client authentication (apiKey) is set",
                host,
            )

    def running(self) -> None:
        self._running = True
        if self.gateway is None:
            raise exceptions.OptionsError(
                "no gateway config: pass --set meterway_config=PATH (or use `meterway run PATH`)"
            )
        self.apply_listeners()
        if self._watcher is None and ctx.options.meterway_config:
            self._watcher = ConfigWatcher(Path(ctx.options.meterway_config), self.reload)
            self._watcher.start()

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def listener_for(self, port: int | None) -> Listener | None:
        """Return the listener a flow arrived on, by the local port."""
        if port is None:
            return None
        return self.listeners.get(port)

    def map_upstream(self, scheme: str, host: str, port: int) -> tuple[str, str, int]:
        """Apply the meterway_upstream mapping to a destination."""
        mapped = self.upstream_map.get(f"{host}:{port}".lower())
        if mapped is None:
            return scheme, host, port
        return mapped.scheme, mapped.host, mapped.port
