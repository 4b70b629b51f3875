"""The tracing addon against real OTLP receivers on 127.0.0.1 (gRPC and HTTP)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from mitmproxy.test import tflow
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from addons import record as flowrecord
from addons.config_load import load_config
from addons.logrow import base_row
from addons.tracing import Tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict] = []
        self.arrived = threading.Event()

    def Export(self, request, context):  # noqa: N802 (the gRPC method name)
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def spans_of(requests) -> list:
    return [span for request in requests for resource in request.resource_spans
            for scope in resource.scope_spans for span in scope.spans]


def attributes(span) -> dict:
    values = {}
    for item in span.attributes:
        value = item.value
        values[item.key] = getattr(value, value.WhichOneof("value"))
    return values


@pytest.fixture
def grpc_receiver():
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_tracing(tmp_path: Path, tracing_yaml: str) -> Tracing:
    path = tmp_path / "gw.yaml"
    path.write_text(f"config:\n  tracing:\n{tracing_yaml}binds: []\n", encoding="utf-8")
    tracing = Tracing(schedule_delay_ms=50)
    tracing.reconfigure(load_config(path))
    return tracing


def run_flow(tracing: Tracing, traceparent: str | None = None, **row_values) -> dict:
    """Drive one flow through the hooks the way the gateway does; return its record."""
    flow = tflow.tflow()
    if traceparent:
        flow.request.headers["traceparent"] = traceparent
    rec = flowrecord.start(flow, 3000)  # what the router's requestheaders does
    tracing.requestheaders(flow)
    tracing.request(flow)
    row = base_row(rec)
    row.update(status=200, outcome="ok", api="chat_completions", provider="openai",
               requested_model="MoM", routed_model="qwen2.5-coder:7b", response_model="qwen2.5-coder:7b",
               input_tokens=120, output_tokens=30, cost_usd=0.0042, duration_ms=250.0,
               router_outcome="ok", router_ms=40.0, trace_id=rec.get("trace_id"))
    row.update(row_values)
    tracing.observe(row)
    return rec


def test_grpc_spans_continue_traceparent(tmp_path: Path, grpc_receiver):
    receiver, port = grpc_receiver
    tracing = make_tracing(tmp_path, f"    otlpEndpoint: http://127.0.0.1:{port}\n"
                                     "    headers: {x-collector-token: t0ken}\n")
    try:
        rec = run_flow(tracing, f"00-{TRACE_ID}-{PARENT_ID}-01")
        assert tracing.force_flush()
    finally:
        tracing.shutdown()

    assert rec["trace_id"] == TRACE_ID
    spans = spans_of(receiver.requests)
    assert len(spans) == 2
    server = next(s for s in spans if s.name == "chat MoM")
    router = next(s for s in spans if s.name == "ext_proc router")
    assert server.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_ID
    assert router.trace_id.hex() == TRACE_ID
    assert router.parent_span_id == server.span_id
    assert router.end_time_unix_nano - router.start_time_unix_nano == 40_000_000
    assert server.end_time_unix_nano - server.start_time_unix_nano == 250_000_000

    values = attributes(server)
    assert values["gen_ai.operation.name"] == "chat"
    assert values["gen_ai.provider.name"] == "openai"
    assert values["gen_ai.request.model"] == "MoM"
    assert values["gen_ai.response.model"] == "qwen2.5-coder:7b"
    assert values["gen_ai.usage.input_tokens"] == 120
    assert values["gen_ai.usage.output_tokens"] == 30
    assert values["meterway.cost_usd"] == pytest.approx(0.0042)
    assert values["meterway.request_id"] == rec["id"]
    assert attributes(router)["meterway.router.outcome"] == "ok"
    assert receiver.metadata[0]["x-collector-token"] == "t0ken"


def test_new_trace_when_sampled(tmp_path: Path, grpc_receiver):
    receiver, port = grpc_receiver
    tracing = make_tracing(tmp_path, f"    otlpEndpoint: http://127.0.0.1:{port}\n    randomSampling: true\n")
    try:
        rec = run_flow(tracing, outcome="upstream_error", status=500, error="provider answered 500",
                       router_outcome="skipped", router_ms=None)
        assert tracing.force_flush()
    finally:
        tracing.shutdown()
    (span,) = spans_of(receiver.requests)
    assert len(rec["trace_id"]) == 32
    assert span.trace_id.hex() == rec["trace_id"]
    assert span.parent_span_id == b""
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert span.status.message == "provider answered 500"


def test_sampling_follows_agentgateway(tmp_path: Path, grpc_receiver):
    receiver, port = grpc_receiver
    # randomSampling defaults to false: a request without a trace is not traced.
    tracing = make_tracing(tmp_path, f"    otlpEndpoint: http://127.0.0.1:{port}\n")
    try:
        untraced = run_flow(tracing)
        unsampled = run_flow(tracing, f"00-{TRACE_ID}-{PARENT_ID}-00")
        assert tracing.force_flush()
    finally:
        tracing.shutdown()
    assert "trace_id" not in untraced
    assert "trace_id" not in unsampled
    assert spans_of(receiver.requests) == []


async def test_http_protocol_and_path(tmp_path: Path):
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def export(request: web.Request) -> web.Response:
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/otel/traces", export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    tracing = make_tracing(tmp_path, f"    otlpEndpoint: http://127.0.0.1:{port}\n    otlpProtocol: http\n"
                                     "    path: /otel/traces\n    randomSampling: 1.0\n")
    try:
        rec = run_flow(tracing)
        # The export thread posts to this loop's server, so wait without blocking the loop.
        flushed = await asyncio.to_thread(tracing.force_flush)
    finally:
        await asyncio.to_thread(tracing.shutdown)
        await runner.cleanup()
    assert flushed
    spans = spans_of(received)
    assert {s.name for s in spans} == {"chat MoM", "ext_proc router"}
    assert all(s.trace_id.hex() == rec["trace_id"] for s in spans)


def test_down_collector_never_blocks(tmp_path: Path, caplog):
    port = free_port()  # nothing listens here
    tracing = make_tracing(tmp_path, f"    otlpEndpoint: http://127.0.0.1:{port}\n    randomSampling: true\n")
    caplog.set_level(logging.WARNING, logger="addons.tracing")
    try:
        started = time.monotonic()
        records = [run_flow(tracing) for _ in range(20)]
        elapsed = time.monotonic() - started
        assert elapsed < 0.5, f"20 requests took {elapsed:.2f}s with the collector down"
        assert all(len(rec["trace_id"]) == 32 for rec in records)
        tracing.force_flush(timeout_ms=15000)
        deadline = time.monotonic() + 15
        while tracing.exporter.dropped < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        tracing.shutdown()
    assert tracing.exporter.dropped == 40  # 20 request spans and 20 router spans
    warnings = [r for r in caplog.records if "span(s) dropped" in r.getMessage()]
    assert len(warnings) == 1  # once a minute, not once per batch


def test_off_without_tracing_config(tmp_path: Path):
    path = tmp_path / "gw.yaml"
    path.write_text("binds: []\n", encoding="utf-8")
    tracing = Tracing()
    tracing.reconfigure(load_config(path))
    rec = run_flow(tracing, f"00-{TRACE_ID}-{PARENT_ID}-01")
    assert tracing.provider is None
    assert "trace_id" not in rec


def test_protos_import_together():
    # xds-protos ships old copies of opentelemetry/proto and google/api; with them the OTLP
    # exporters fail to import. Both sides must import in the same environment.
    from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

    assert external_processor_pb2.ProcessingRequest.DESCRIPTOR.name == "ProcessingRequest"
    assert hasattr(external_processor_pb2_grpc, "ExternalProcessorStub")
    assert InstrumentationScope.DESCRIPTOR.full_name == "opentelemetry.proto.common.v1.InstrumentationScope"
    assert GrpcExporter is not HttpExporter
