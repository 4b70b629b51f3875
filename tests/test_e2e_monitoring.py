"""Metrics, traces and alerts of a real gateway process, checked against its request log.

One gateway runs with `statsAddr` on a free port, tracing to a local OTLP/gRPC receiver with
every request sampled, an extProc policy pointing at the stand-in router, and alert rules
posting to a local webhook receiver. The module sends a fixed sequence of requests with the
openai SDK (plain, streamed, with a `traceparent`, upstream errors, a router failing open),
then each test compares one monitoring output with the SQLite `requests` rows.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from tests.gateway_process import GatewayProcess, free_port
from tests.promread import scrape as scrape_url
from tests.promread import total
from tests.routerthread import ThreadedRouter
from tests.standins.ollama_api import OllamaStandIn
from tests.standins.openai_api import OpenAIStandIn
from tests.test_tracing import Receiver as OtlpReceiver
from tests.test_tracing import attributes, spans_of

OPENAI_KEY = "sk-canary-monitoring-3c8e1a5f"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
# OTLP's Span.SpanKind and Status.StatusCode values.
SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3
STATUS_ERROR = 2

CONFIG = """\
policies:
- name:
    name: router
    namespace: default
  target:
    gateway:
      gatewayName: default
      gatewayNamespace: default
  phase: gateway
  policy:
    extProc:
      host: {router}
      processingOptions:
        requestHeaderMode: send
        requestBodyMode: buffered
        responseHeaderMode: skip
        responseBodyMode: none
      failureMode: failOpen
binds:
- port: {port}
  listeners:
  - routes:
    - name: openai
      matches:
      - headers:
        - name: x-selected-model
          value:
            exact: gpt-4o
      policies:
        ai:
          modelAliases:
            MoM: gpt-4o
      backends:
      - ai:
          name: openai
          provider:
            openAI: {{}}
        policies:
          backendAuth:
            key: $OPENAI_API_KEY
    - name: fallback
      policies:
        ai:
          modelAliases:
            MoM: qwen2.5-coder:7b
      backends:
      - ai:
          name: ollama
          provider:
            openAI: {{}}
          hostOverride: localhost:11434
config:
  database:
    url: sqlite://log.db
  statsAddr: 127.0.0.1:{stats}
  readinessAddr: "off"
  tracing:
    otlpEndpoint: http://127.0.0.1:{otlp}
    randomSampling: true
meterway:
  alerts:
    suppressFor: 1s
    webhook:
      url: http://127.0.0.1:{hook}/hook
    rules:
    - name: errors
      errorRate: {{window: 2m, threshold: 0.25, minRequests: 4}}
    - name: provider-down
      providerFailures: {{consecutive: 2}}
    - name: router-open
      routerFailOpen: {{consecutive: 1}}
"""


class HookHandler(BaseHTTPRequestHandler):
    """Store each JSON POST on the server's `posts` list."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's method name)
        length = int(self.headers.get("content-length") or 0)
        self.server.posts.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass  # keep the test output clean


@dataclass
class Sent:
    """What the client saw of one request, by the gateway's request id."""

    request_id: str
    text: str = ""
    usage: Any = None


@dataclass
class Stack:
    folder: Path
    gateway: GatewayProcess
    stats_port: int
    otlp: OtlpReceiver
    hooks: list[dict]
    sent: dict[str, Sent] = field(default_factory=dict)

    @property
    def db(self) -> Path:
        return self.folder / "log.db"

    def rows(self) -> list[dict]:
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("select * from requests order by started_ms")]
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


def wait_until(check: Any, what: str, timeout: float = 20.0) -> Any:
    # The timeout is generous because CI machines can be busy; a healthy run waits far less.
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def wait_row(stack: Stack, request_id: str) -> dict:
    def find() -> dict | None:
        if not stack.db.exists():
            return None
        try:
            return next((r for r in stack.rows() if r["id"] == request_id), None)
        except sqlite3.OperationalError:
            return None

    try:
        return wait_until(find, f"row {request_id}")
    except AssertionError as error:
        raise AssertionError(f"{error}; gateway log:\n{stack.gateway.log()}") from None


def chat(client: openai.OpenAI, prompt: str, **kwargs: Any) -> Sent:
    """Send one buffered chat completion; an upstream error still returns its request id."""
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="MoM", messages=[{"role": "user", "content": prompt}], **kwargs)
    except openai.APIStatusError as error:
        return Sent(error.response.headers["x-meterway-request-id"])
    completion = raw.parse()
    return Sent(raw.headers["x-meterway-request-id"], completion.choices[0].message.content or "",
                completion.usage)


def stream_chat(client: openai.OpenAI, prompt: str) -> Sent:
    with client.chat.completions.with_streaming_response.create(
            model="MoM", stream=True, messages=[{"role": "user", "content": prompt}]) as raw:
        request_id = raw.headers["x-meterway-request-id"]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    return Sent(request_id, text)


def send_traffic(stack: Stack, client: openai.OpenAI, router: ThreadedRouter,
                 upstream: OpenAIStandIn) -> None:
    """Send the module's requests; the alert thresholds in CONFIG are set for this order."""

    def record(name: str, sent: Sent) -> dict:
        stack.sent[name] = sent
        return wait_row(stack, sent.request_id)

    # Cache and reasoning buckets, so every token type of the metrics has a non-zero sum.
    upstream.next_usage = {"prompt_tokens": 40, "prompt_tokens_details": {"cached_tokens": 16},
                           "completion_tokens_details": {"reasoning_tokens": 3}}
    record("plain", chat(client, "a careful analysis of the plan"))
    record("stream", stream_chat(client, "analysis, streamed"))
    record("traceparent", chat(client, "analysis with a trace", extra_headers={"traceparent": TRACEPARENT}))
    record("local", chat(client, "write python code"))

    # Two upstream errors in a row: 2 of 6 requests failed (over 25%) and openai failed twice.
    upstream.next_error = (500, None, None)
    record("error500", chat(client, "analysis that fails"))
    upstream.next_error = (503, None, None)
    record("error503", chat(client, "analysis that fails again"))

    router.stop()
    try:
        row = record("fail_open", chat(client, "analysis while the router is down"))
    finally:
        router.start()
    assert row["router_outcome"] == "failed_open", row

    # Successful calls clear all three: the router call succeeds, openai returns 200, and the
    # error share falls to 2 of 8 (25%, not over the threshold). The router's client reconnects
    # with a backoff, so a call right after the restart may fail open once more.
    deadline = time.monotonic() + 10
    attempt = 0
    while True:
        row = record(f"recovered{attempt}", chat(client, "analysis after recovery"))
        if row["router_outcome"] == "ok" or time.monotonic() > deadline:
            break
        attempt += 1
        time.sleep(0.2)
    assert row["router_outcome"] == "ok", row
    assert row["provider"] == "openai", row


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("monitoring")

    otlp = OtlpReceiver()
    otlp_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(otlp, otlp_server)
    otlp_port = otlp_server.add_insecure_port("127.0.0.1:0")
    otlp_server.start()

    hook_server = ThreadingHTTPServer(("127.0.0.1", 0), HookHandler)
    hook_server.posts = []  # type: ignore[attr-defined]
    threading.Thread(target=hook_server.serve_forever, name="webhook", daemon=True).start()

    upstream, ollama = OpenAIStandIn(), OllamaStandIn()
    upstream.start_in_thread()
    ollama.start_in_thread()
    router = ThreadedRouter("keywords").start()

    port, stats_port = free_port(), free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(router=router.target, port=port, stats=stats_port, otlp=otlp_port,
                                    hook=hook_server.server_port))
    gateway = GatewayProcess(
        config, [port, stats_port],
        upstreams={"api.openai.com:443": upstream.url, "localhost:11434": ollama.url},
        env={"OPENAI_API_KEY": OPENAI_KEY},
    )
    gateway.start()
    built = Stack(folder, gateway, stats_port, otlp, hook_server.posts)  # type: ignore[attr-defined]
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-client", max_retries=0)
        send_traffic(built, client, router, upstream)
        yield built
    finally:
        gateway.stop()
        router.close()
        upstream.stop_in_thread()
        ollama.stop_in_thread()
        hook_server.shutdown()
        hook_server.server_close()
        otlp_server.stop(0)


def scrape(stack: Stack) -> dict[str, list]:
    return scrape_url(f"http://127.0.0.1:{stack.stats_port}/metrics")


def test_traffic_reached_the_log(stack: Stack) -> None:
    rows = {row["id"]: row for row in stack.rows()}
    assert set(rows) == {sent.request_id for sent in stack.sent.values()}
    by_name = {name: rows[sent.request_id] for name, sent in stack.sent.items()}
    assert by_name["plain"]["provider"] == "openai"
    assert by_name["plain"]["cost_status"] == "priced"
    assert by_name["stream"]["stream"] == 1
    assert by_name["local"]["route"] == "fallback"
    assert by_name["local"]["cost_usd"] == 0
    assert (by_name["error500"]["status"], by_name["error500"]["outcome"]) == (500, "upstream_error")
    assert (by_name["error503"]["status"], by_name["error503"]["outcome"]) == (503, "upstream_error")
    assert by_name["fail_open"]["route"] == "fallback"
    plain = stack.sent["plain"]
    assert by_name["plain"]["input_tokens"] == plain.usage.prompt_tokens
    assert by_name["plain"]["output_tokens"] == plain.usage.completion_tokens
    assert by_name["plain"]["input_tokens"] == 40
    assert by_name["plain"]["cached_input_tokens"] == 16
    assert by_name["plain"]["reasoning_tokens"] == 3


def test_metrics_match_request_rows(stack: Stack) -> None:
    samples = scrape(stack)

    by_status = stack.query("select status, outcome, count(*) from requests group by status, outcome")
    assert len(by_status) >= 3
    for status, outcome, count in by_status:
        shown = total(samples, "meterway_requests_total", status=str(status), outcome=outcome)
        assert shown == count, (status, outcome)
    assert total(samples, "meterway_requests_total") == len(stack.sent)

    for token_type, column in (("input", "input_tokens"), ("output", "output_tokens"),
                               ("input_cache_read", "cached_input_tokens"),
                               ("input_cache_write", "cache_write_tokens")):
        (expected,) = stack.query(f"select coalesce(sum({column}), 0) from requests")[0]
        shown = total(samples, "agentgateway_gen_ai_client_token_usage_sum", gen_ai_token_type=token_type)
        assert shown == expected, token_type
    (inputs, cached) = stack.query("select sum(input_tokens), sum(cached_input_tokens) from requests")[0]
    assert inputs > 0
    assert cached > 0

    (cost,) = stack.query("select sum(cost_usd) from requests")[0]
    assert cost > 0
    assert total(samples, "agentgateway_gen_ai_client_cost_usd_total") == pytest.approx(cost, rel=1e-9)

    (durations,) = stack.query("select count(duration_ms) from requests")[0]
    assert total(samples, "agentgateway_gen_ai_server_request_duration_count") == durations
    (first_bytes,) = stack.query("select count(ttft_ms) from requests")[0]
    assert first_bytes > 0
    assert total(samples, "agentgateway_gen_ai_server_time_to_first_token_count") == first_bytes

    for outcome, count in stack.query("select router_outcome, count(*) from requests group by router_outcome"):
        assert total(samples, "meterway_router_calls_total", outcome=outcome) == count, outcome
    # The writer process reports what it wrote after the rows are in the file, so this count
    # may trail the rows a test can already read.
    deadline = time.monotonic() + 10
    while total(samples, "meterway_log_rows_written_total") < len(stack.sent) and time.monotonic() < deadline:
        time.sleep(0.1)
        samples = scrape(stack)
    assert total(samples, "meterway_log_rows_written_total") == len(stack.sent)


def test_model_labels_match_rows(stack: Stack) -> None:
    samples = scrape(stack)
    for provider, model, count in stack.query(
            "select provider, requested_model, count(*) from requests group by provider, requested_model"):
        shown = total(samples, "meterway_requests_total", gen_ai_provider_name=provider,
                      gen_ai_request_model=model, gen_ai_operation_name="chat")
        assert shown == count, (provider, model)


def server_spans(stack: Stack) -> dict[str, Any]:
    """Wait for one server span per row and return them by request id."""
    count = len(stack.sent)

    def collect() -> dict[str, Any] | None:
        found = {attributes(s).get("meterway.request_id"): s
                 for s in spans_of(list(stack.otlp.requests)) if s.kind == SPAN_KIND_SERVER}
        return found if len(found) >= count else None

    return wait_until(collect, f"{count} server spans")


def test_one_span_per_request(stack: Stack) -> None:
    spans = server_spans(stack)
    rows = stack.rows()
    all_server = [s for s in spans_of(list(stack.otlp.requests)) if s.kind == SPAN_KIND_SERVER]
    assert len(all_server) == len(rows)
    for row in rows:
        span = spans[row["id"]]
        values = attributes(span)
        assert span.trace_id.hex() == row["trace_id"], row["id"]
        assert span.name == f"chat {row['requested_model']}"
        assert values["gen_ai.provider.name"] == row["provider"]
        assert values["gen_ai.request.model"] == row["requested_model"]
        assert values.get("gen_ai.response.model") == row["response_model"]
        assert values.get("gen_ai.usage.input_tokens") == row["input_tokens"]
        assert values.get("gen_ai.usage.output_tokens") == row["output_tokens"]
        assert values["http.response.status_code"] == row["status"]
        assert values["meterway.routed_model"] == row["routed_model"]
        assert values["meterway.outcome"] == row["outcome"]
        assert values.get("meterway.usage.cached_input_tokens") == row["cached_input_tokens"]
        assert values.get("meterway.cost_usd") == row["cost_usd"]
        failed = row["outcome"] != "ok"
        assert (span.status.code == STATUS_ERROR) == failed, row["id"]


def test_traceparent_continues_trace(stack: Stack) -> None:
    spans = server_spans(stack)
    span = spans[stack.sent["traceparent"].request_id]
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_SPAN_ID
    others = [s for rid, s in spans.items() if rid != stack.sent["traceparent"].request_id]
    assert all(s.trace_id.hex() != TRACE_ID and not s.parent_span_id for s in others)
    (trace_id,) = stack.query(
        f"select trace_id from requests where id = '{stack.sent['traceparent'].request_id}'")[0]
    assert trace_id == TRACE_ID


def test_router_child_spans(stack: Stack) -> None:
    spans = server_spans(stack)

    def router_spans() -> list | None:
        found = [s for s in spans_of(list(stack.otlp.requests)) if s.name == "ext_proc router"]
        return found if len(found) >= len(spans) else None

    children = wait_until(router_spans, "one router span per request")
    by_parent = {(c.trace_id, c.parent_span_id): c for c in children}
    assert len(by_parent) == len(children) == len(spans)
    for row in stack.rows():
        parent = spans[row["id"]]
        child = by_parent[(parent.trace_id, parent.span_id)]
        assert child.kind == SPAN_KIND_CLIENT
        assert attributes(child)["meterway.router.outcome"] == row["router_outcome"]
        assert attributes(child)["meterway.router.ms"] == pytest.approx(row["router_ms"])
        assert child.start_time_unix_nano >= parent.start_time_unix_nano
        assert child.end_time_unix_nano <= parent.end_time_unix_nano
        assert (child.status.code == STATUS_ERROR) == (row["router_outcome"] != "ok"), row["id"]


def test_alerts_fire_and_clear_once(stack: Stack) -> None:
    wait_until(lambda: len(stack.hooks) >= 6, "six alert notices")
    time.sleep(0.3)  # gives a duplicate notice, posted right after the last one, time to arrive
    by_rule: dict[str, list[dict]] = {}
    for post in stack.hooks:
        by_rule.setdefault(post["rule"], []).append(post)
    assert {rule: [p["status"] for p in posts] for rule, posts in by_rule.items()} == {
        "errors": ["firing", "resolved"],
        "provider-down": ["firing", "resolved"],
        "router-open": ["firing", "resolved"],
    }

    errors = by_rule["errors"][0]
    assert errors["kind"] == "errorRate"
    assert errors["value"] == pytest.approx(2 / 6)
    assert errors["link"].startswith("http://127.0.0.1:15000/log/requests?")
    assert by_rule["errors"][1]["value"] == pytest.approx(2 / 8)

    provider = by_rule["provider-down"][0]
    assert provider["key"] == "openai"
    assert provider["value"] == 2
    assert "failed 2 request(s) in a row" in provider["message"]

    router = by_rule["router-open"][0]
    assert router["kind"] == "routerFailOpen"
    assert router["value"] == 1
    assert all(OPENAI_KEY not in json.dumps(post) for post in stack.hooks)
