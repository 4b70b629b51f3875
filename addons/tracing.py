"""The tracing addon: one OpenTelemetry span per request, exported over OTLP.

`requestheaders` starts the span, continuing an incoming W3C `traceparent`, and puts its trace
id into the flow record's `trace_id`, so the request log stores it. `observe(row)`, called by
CostLog with the finished row, adds the GenAI attributes, a child span for the ext_proc router
call, and ends the span at the request's end. A BatchSpanProcessor exports from its own
thread: a collector that is down costs dropped spans (counted, warned about once a minute),
never a blocked or failed request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from mitmproxy import http
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from addons import genai
from addons import record as flowrecord
from addons.config_monitoring import TracingConfig
from addons.ratelog import LogThrottle

logger = logging.getLogger(__name__)

# Seconds one export may take, retries included; a down collector gives up after this.
EXPORT_TIMEOUT_S = 5.0
# Outcomes that are not failures of the request (the router answering itself is by design).
OK_OUTCOMES = {"ok", "router_response"}
# Spans whose row never arrives (a bug upstream of observe) are ended after this many
# others are open, so the open-span table stays bounded.
MAX_OPEN_SPANS = 10000
_propagator = TraceContextTextMapPropagator()


class GatewaySampler(Sampler):
    """Sample like agentgateway: `clientSampling` for requests that carry a sampled trace,
    `randomSampling` for the rest; an unsampled incoming trace stays unsampled."""

    def __init__(self, random_ratio: float, client_ratio: float) -> None:
        self._random = TraceIdRatioBased(random_ratio)
        self._client = TraceIdRatioBased(client_ratio)

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid:
            return self._random.should_sample(parent_context, trace_id, name, kind, attributes, links)
        if not parent.trace_flags.sampled:
            return SamplingResult(Decision.DROP, None, parent.trace_state)
        return self._client.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return f"GatewaySampler(random={self._random.rate}, client={self._client.rate})"


class CountingExporter(SpanExporter):
    """Wrap an exporter: count the spans it failed to send and warn once a minute."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self.inner = inner
        self.endpoint = endpoint
        self.exported = 0
        self.dropped = 0
        self._throttle = LogThrottle(60.0)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as error:  # an exporter bug must not kill the export thread
            logger.debug("span export raised: %r", error)
            result = SpanExportResult.FAILURE
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
            return result
        self.dropped += len(spans)
        held = self._throttle.ready("export")
        if held is not None:
            logger.warning("tracing: %d span(s) dropped in total: the OTLP collector at %s did not "
                           "accept them (%d warning(s) held back); check that it runs and that "
                           "config.tracing.otlpEndpoint and otlpProtocol match it",
                           self.dropped, self.endpoint, held)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def make_exporter(settings: TracingConfig) -> SpanExporter:
    """Create the OTLP exporter for `otlpProtocol`; raise ImportError when it cannot load."""
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.otlp_endpoint, headers=dict(settings.headers),
                            insecure=settings.otlp_endpoint.startswith("http://"), timeout=EXPORT_TIMEOUT_S)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=settings.export_url(), headers=dict(settings.headers), timeout=EXPORT_TIMEOUT_S)


def _ns(epoch_ms: float) -> int:
    return int(epoch_ms * 1_000_000)


class Tracing:
    """Addon: request spans for `config.tracing`. List it after the router addon."""

    def __init__(self, config: Any | None = None, *, schedule_delay_ms: int = 1000) -> None:
        self.provider: TracerProvider | None = None
        self.exporter: CountingExporter | None = None
        self._tracer: trace.Tracer | None = None
        self._settings: TracingConfig | None = None
        self._schedule_delay_ms = schedule_delay_ms
        self._open: dict[str, trace.Span] = {}
        # Request id -> when this addon's `request` hook ran, for spans still open.
        self._router_done: dict[str, int] = {}
        if config is not None:
            config.on_reload(self.reconfigure)

    def reconfigure(self, gateway: Any) -> None:
        """Start, change or stop exporting for a newly loaded config."""
        section = getattr(gateway, "config", None)
        settings = getattr(section, "tracing", None)
        if settings == self._settings:
            return
        self.shutdown()
        self._settings = settings
        if settings is None:
            return
        try:
            inner = make_exporter(settings)
        except ImportError as error:
            logger.warning(
                "tracing is off: the OTLP exporter cannot be imported (%s). xds-protos may have "
                "overwritten opentelemetry-proto's files; run `pip install --force-reinstall --no-deps "
                "opentelemetry-proto googleapis-common-protos` at the versions installed, or `make`", error)
            return
        self.exporter = CountingExporter(inner, settings.export_url())
        self.provider = TracerProvider(
            sampler=GatewaySampler(settings.random_ratio(), settings.client_ratio()),
            resource=Resource.create({"service.name": "meterway"}),
        )
        self.provider.add_span_processor(BatchSpanProcessor(
            self.exporter, schedule_delay_millis=self._schedule_delay_ms,
            export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000)))
        self._tracer = self.provider.get_tracer("meterway")
        logger.info("tracing: spans go to %s over OTLP/%s", settings.export_url(), settings.otlp_protocol)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        rec = flowrecord.get(flow)
        if self._tracer is None or rec is None or rec.get("id") in self._open:
            return
        incoming = _propagator.extract({k.lower(): v for k, v in flow.request.headers.items()})
        span = self._tracer.start_span(
            "gateway request", context=incoming, kind=SpanKind.SERVER,
            start_time=_ns(flow.request.timestamp_start * 1000))
        if not span.is_recording():
            return
        if len(self._open) >= MAX_OPEN_SPANS:
            oldest = next(iter(self._open))
            self._open.pop(oldest).end()
            self._router_done.pop(oldest, None)
        self._open[rec["id"]] = span
        rec["trace_id"] = format(span.get_span_context().trace_id, "032x")

    def request(self, flow: http.HTTPFlow) -> None:
        # Runs after the router's `request` hook, so this is about when its call ended.
        rec = flowrecord.get(flow)
        if rec is not None and rec.get("id") in self._open:
            self._router_done[rec["id"]] = time.time_ns()

    def observe(self, row: dict[str, Any]) -> None:
        """End the row's span with its GenAI attributes; called by CostLog on the event loop."""
        span = self._open.pop(row.get("id"), None) if self._open else None
        if span is None:
            return
        try:
            self._finish(span, row)
        except Exception:  # a tracing bug must never fail the request or the other observers
            logger.exception("request %s: finishing its span failed", row.get("id"))
            span.end()

    def _finish(self, span: trace.Span, row: dict[str, Any]) -> None:
        operation = genai.operation_name(row)
        model = row.get("requested_model")
        span.update_name(f"{operation} {model}" if model else operation)
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": row.get("provider"),
            "gen_ai.request.model": model,
            "gen_ai.response.model": row.get("response_model"),
            "gen_ai.usage.input_tokens": row.get("input_tokens"),
            "gen_ai.usage.output_tokens": row.get("output_tokens"),
            "http.response.status_code": row.get("status"),
            "meterway.request_id": row.get("id"),
            "meterway.route": row.get("route"),
            "meterway.routed_model": row.get("routed_model"),
            "meterway.outcome": row.get("outcome"),
            "meterway.cost_usd": row.get("cost_usd"),
            "meterway.usage.cached_input_tokens": row.get("cached_input_tokens"),
            "meterway.usage.reasoning_tokens": row.get("reasoning_tokens"),
        }
        span.set_attributes({key: value for key, value in attributes.items() if value is not None})
        if row.get("outcome") not in OK_OUTCOMES:
            span.set_status(Status(StatusCode.ERROR, row.get("error") or row.get("outcome") or "error"))

        started_ms = row.get("started_ms") or span.start_time / 1_000_000  # type: ignore[attr-defined]
        end_ns = _ns(started_ms + (row.get("duration_ms") or 0))
        self._router_span(span, row, started_ms, end_ns)
        span.end(end_time=max(end_ns, span.start_time))  # type: ignore[attr-defined]

    def _router_span(self, parent: trace.Span, row: dict[str, Any], started_ms: float, end_ns: int) -> None:
        outcome = row.get("router_outcome")
        router_ms = row.get("router_ms")
        if outcome in (None, "skipped") or router_ms is None or self._tracer is None:
            return
        # NOTE: the row has the router's latency but not its start; the call is placed to end
        # when this addon's `request` hook ran, just after the router's, else at the start.
        done_ns = self._router_done.pop(row.get("id"), None)
        start_ns = done_ns - _ns(router_ms) if done_ns else _ns(started_ms)
        child = self._tracer.start_span(
            "ext_proc router", context=trace.set_span_in_context(parent), kind=SpanKind.CLIENT,
            start_time=start_ns, attributes={"meterway.router.outcome": outcome,
                                             "meterway.router.ms": float(router_ms)})
        if outcome not in ("ok", "immediate_response"):
            child.set_status(Status(StatusCode.ERROR, f"router {outcome}"))
        child.end(end_time=start_ns + _ns(router_ms))

    def force_flush(self, timeout_ms: int = 10000) -> bool:
        """Export the spans ended so far; return False when that did not finish in time."""
        return self.provider.force_flush(timeout_ms) if self.provider is not None else True

    def shutdown(self) -> None:
        """End open spans, flush and stop the exporter."""
        for span in self._open.values():
            span.end()
        self._open.clear()
        self._router_done.clear()
        if self.provider is not None:
            self.provider.shutdown()
        self.provider = None
        self._tracer = None
        self._settings = None

    def done(self) -> None:
        self.shutdown()
