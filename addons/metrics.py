"""The metrics addon: Prometheus metrics from the request log rows, served on `statsAddr`.

CostLog calls `observe(row)` with each finished row. The GenAI metrics keep agentgateway's
names (`agentgateway_gen_ai_*`, OpenTelemetry GenAI semantic conventions) so one dashboard
reads both gateways; meterway's own health metrics start with `meterway_`.

The endpoint is prometheus_client's WSGI server in a daemon thread, not a server on the
proxy's event loop: a slow scrape never delays a request, and the client's metric objects
are thread-safe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from addons import genai
from addons.config_monitoring import parse_stats_addr
from addons.metrics_labels import DEFAULT_UNKNOWN_CAP, ModelLabels, known_models

logger = logging.getLogger(__name__)

MODEL_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                "gen_ai_response_model", "route", "bind")

# Bucket boundaries advised by the OpenTelemetry GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
ROUTER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# A callable returning the request log's counters (`written`, `dropped`, `failed`,
# `queued`), or None while there is no store.
StatsSource = Callable[[], Any]


class _StoreCollector(Collector):
    """Read the request log writer's counters at scrape time."""

    def __init__(self, stats: StatsSource) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self._stats()
        if stats is None:
            return
        for name, help_text in (
            ("written", "Request log rows written to SQLite."),
            ("dropped", "Request log rows dropped because the write queue was full."),
            ("failed", "Request log rows lost because SQLite kept failing."),
        ):
            family = CounterMetricFamily(f"meterway_log_rows_{name}", help_text)
            family.add_metric([], getattr(stats, name))
            yield family
        queued = GaugeMetricFamily("meterway_log_rows_queued", "Request log rows waiting to be written.")
        queued.add_metric([], stats.queued)
        yield queued


class GatewayMetrics:
    """The metric objects and the mapping from a request log row onto them."""

    def __init__(self, registry: CollectorRegistry, labels: ModelLabels) -> None:
        self.labels = labels
        self.token_usage = Histogram(
            "agentgateway_gen_ai_client_token_usage", "Number of tokens used per request.",
            MODEL_LABELS + ("gen_ai_token_type",), registry=registry, buckets=TOKEN_BUCKETS)
        self.duration = Histogram(
            "agentgateway_gen_ai_server_request_duration",
            "Duration of generative AI requests, in seconds.",
            MODEL_LABELS, registry=registry, buckets=DURATION_BUCKETS)
        self.ttft = Histogram(
            "agentgateway_gen_ai_server_time_to_first_token",
            "Time from the request to the first response byte, in seconds.",
            MODEL_LABELS, registry=registry, buckets=TTFT_BUCKETS)
        self.cost = Counter(
            "agentgateway_gen_ai_client_cost_usd", "Cumulative cost of generative AI requests, in USD.",
            MODEL_LABELS, registry=registry)
        self.requests = Counter(
            "meterway_requests", "Requests the gateway logged, by HTTP status and outcome.",
            MODEL_LABELS + ("status", "outcome"), registry=registry)
        self.router_calls = Counter(
            "meterway_router_calls", "ext_proc router calls, by outcome.", ("outcome",), registry=registry)
        self.router_duration = Histogram(
            "meterway_router_duration_seconds", "Latency of ext_proc router calls, in seconds.",
            ("outcome",), registry=registry, buckets=ROUTER_BUCKETS)

    def record(self, row: dict[str, Any]) -> None:
        """Add one request log row to the metrics."""
        base = (
            genai.operation_name(row),
            genai.text(row.get("provider")),
            self.labels.label(row.get("requested_model")),
            self.labels.label(row.get("response_model")),
            genai.text(row.get("route")),
            genai.text(row.get("bind")),
        )
        self.requests.labels(*base, genai.text(row.get("status")), genai.text(row.get("outcome"))).inc()
        for token_type, column in genai.TOKEN_TYPES:
            count = row.get(column)
            if count is not None:
                self.token_usage.labels(*base, token_type).observe(count)
        if row.get("duration_ms") is not None:
            self.duration.labels(*base).observe(row["duration_ms"] / 1000)
        if row.get("ttft_ms") is not None:
            self.ttft.labels(*base).observe(row["ttft_ms"] / 1000)
        if row.get("cost_usd"):
            self.cost.labels(*base).inc(row["cost_usd"])
        router_outcome = row.get("router_outcome")
        if router_outcome and router_outcome != "skipped":
            self.router_calls.labels(router_outcome).inc()
            if row.get("router_ms") is not None:
                self.router_duration.labels(router_outcome).observe(row["router_ms"] / 1000)


class Metrics:
    """Addon: keeps the Prometheus metrics and serves them on `config.statsAddr`."""

    def __init__(self, config: Any | None = None, stats: StatsSource | None = None, *,
                 unknown_model_cap: int = DEFAULT_UNKNOWN_CAP) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, ModelLabels(cap=unknown_model_cap))
        if stats is not None:
            self.registry.register(_StoreCollector(stats))
        # The address being served (with the real port when 0 was asked for).
        self.address: tuple[str, int] | None = None
        self._requested: tuple[str, int] | None = None
        self._server: Any = None
        self._config = config
        if config is not None:
            config.on_reload(self.reconfigure)

    def reconfigure(self, gateway: Any) -> None:
        """Take the known model names and the stats address from a newly loaded config."""
        self.metrics.labels.set_known(known_models(gateway))
        section = getattr(gateway, "config", None)
        override = self._config.address_override("stats") if self._config is not None else None
        address = parse_stats_addr(override or getattr(section, "stats_addr", None))
        if self._server is not None and address == self._requested:
            return
        self.stop()
        self._requested = address
        if address is not None:
            self.start(*address)

    def start(self, host: str, port: int) -> None:
        """Serve the metrics on host:port in a daemon thread; a busy port only logs a warning.

        A warning, not an error: mitmdump exits on an error logged during startup, and the
        gateway should keep serving traffic without its metrics endpoint.
        """
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            logger.warning("metrics endpoint not started on %s:%s: %s; set config.statsAddr to a free "
                         "HOST:PORT or to off", host, port, error)
            self._server = None
            return
        self.address = (host, self._server.server_port)
        logger.info("metrics: http://%s:%s/metrics", host, self._server.server_port)

    def stop(self) -> None:
        """Stop the metrics endpoint, if it runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def observe(self, row: dict[str, Any]) -> None:
        """Count one finished request log row; called by CostLog on the event loop."""
        try:
            self.metrics.record(row)
        except Exception:  # a metrics bug must never fail the request or the other observers
            logger.exception("request %s: updating the metrics failed", row.get("id"))

    def done(self) -> None:
        self.stop()
