"""The metrics addon: rows fed through `observe` come back out of a real `/metrics` scrape."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from addons.config_load import load_config
from addons.logrow import ROW_KEYS
from addons.metrics import Metrics
from addons.metrics_labels import OTHER, ModelLabels, known_models
from addons.store import RequestStore
from tests.promread import scrape as scrape_url
from tests.promread import total

CONFIG = """\
config:
  statsAddr: 127.0.0.1:0
  modelCatalog:
  - inline: {providers: {openai: {models: {gpt-4o-mini: {rates: {input: "0.15", output: "0.6"}}}}}}
binds:
- port: 3000
  listeners:
  - routes:
    - name: chat
      policies:
        ai:
          modelAliases: {MoM: qwen2.5-coder:7b, "gpt-*": gpt-4o-mini}
      backends:
      - ai: {name: openai, provider: {openAI: {}}}
"""


def make_row(**values: object) -> dict:
    row = {key: None for key in ROW_KEYS}
    row.update(id="r", bind=3000, route="chat", provider="openai", api="chat_completions",
               requested_model="MoM", response_model="qwen2.5-coder:7b", status=200, outcome="ok",
               router_outcome="skipped")
    row.update(values)
    return row


ROWS = [
    make_row(input_tokens=100, output_tokens=20, cached_input_tokens=40, cache_write_tokens=0,
             duration_ms=1500.0, ttft_ms=200.0, cost_usd=0.002, router_outcome="ok", router_ms=12.0),
    make_row(input_tokens=50, output_tokens=5, duration_ms=300.0, ttft_ms=90.0, cost_usd=0.001,
             router_outcome="failed_open", router_ms=5000.0),
    make_row(status=502, outcome="upstream_unreachable", duration_ms=10.0, response_model=None,
             router_outcome="timeout_failed_open", router_ms=60000.0),
    make_row(status=200, outcome="router_response", provider=None, route=None, response_model=None,
             router_outcome="immediate_response", router_ms=3.0, duration_ms=4.0),
]


@pytest.fixture
def served(tmp_path: Path):
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    metrics = Metrics()
    metrics.reconfigure(load_config(path))
    yield metrics
    metrics.stop()


def scrape(metrics: Metrics) -> dict[str, list]:
    host, port = metrics.address
    return scrape_url(f"http://{host}:{port}/metrics")


def test_scrape_matches_rows(served: Metrics):
    for row in ROWS:
        served.observe(row)
    samples = scrape(served)

    assert total(samples, "meterway_requests_total") == len(ROWS)
    assert total(samples, "meterway_requests_total", status="200", outcome="ok") == 2
    assert total(samples, "meterway_requests_total", status="502", outcome="upstream_unreachable") == 1
    assert total(samples, "meterway_requests_total", outcome="router_response", gen_ai_provider_name="") == 1

    usage = "agentgateway_gen_ai_client_token_usage"
    assert total(samples, usage + "_sum", gen_ai_token_type="input") == 150
    assert total(samples, usage + "_count", gen_ai_token_type="input") == 2
    assert total(samples, usage + "_sum", gen_ai_token_type="output") == 25
    assert total(samples, usage + "_sum", gen_ai_token_type="input_cache_read") == 40
    assert total(samples, usage + "_count", gen_ai_token_type="input_cache_write") == 1

    duration = "agentgateway_gen_ai_server_request_duration"
    assert total(samples, duration + "_count") == 4
    assert total(samples, duration + "_sum") == pytest.approx((1500 + 300 + 10 + 4) / 1000)
    ttft = "agentgateway_gen_ai_server_time_to_first_token"
    assert total(samples, ttft + "_count") == 2
    assert total(samples, ttft + "_sum") == pytest.approx(0.29)
    assert total(samples, "agentgateway_gen_ai_client_cost_usd_total") == pytest.approx(0.003)

    assert total(samples, "meterway_router_calls_total") == 4
    for outcome in ("ok", "failed_open", "timeout_failed_open", "immediate_response"):
        assert total(samples, "meterway_router_calls_total", outcome=outcome) == 1
    assert total(samples, "meterway_router_duration_seconds_sum", outcome="timeout_failed_open") == 60


def test_labels_follow_genai_names(served: Metrics):
    served.observe(ROWS[0])
    samples = scrape(served)
    (sample,) = samples["meterway_requests_total"]
    assert sample.labels == {
        "gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "MoM", "gen_ai_response_model": "qwen2.5-coder:7b",
        "route": "chat", "bind": "3000", "status": "200", "outcome": "ok",
    }


def test_unknown_models_capped(tmp_path: Path):
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    metrics = Metrics(unknown_model_cap=3)
    metrics.reconfigure(load_config(path))
    try:
        for number in range(10):
            metrics.observe(make_row(requested_model=f"made-up-{number}", response_model="gpt-4o-mini"))
        metrics.observe(make_row(requested_model="MoM"))
        samples = scrape(metrics)
    finally:
        metrics.stop()
    requested = {s.labels["gen_ai_request_model"] for s in samples["meterway_requests_total"]}
    assert requested == {"made-up-0", "made-up-1", "made-up-2", OTHER, "MoM"}
    assert total(samples, "meterway_requests_total", gen_ai_request_model=OTHER) == 7
    assert total(samples, "meterway_requests_total", gen_ai_response_model="gpt-4o-mini") == 10


def test_known_models_from_config(tmp_path: Path):
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    known = known_models(load_config(path))
    assert known == {"MoM", "qwen2.5-coder:7b", "gpt-*", "gpt-4o-mini"}
    labels = ModelLabels(known, cap=0)
    assert labels.label("gpt-4o-mini") == "gpt-4o-mini"
    # A wildcard alias does not make every matching name a label value.
    assert labels.label("gpt-5-anything") == OTHER
    assert labels.label(None) == ""


def test_store_counters_scraped(tmp_path: Path):
    store = RequestStore(tmp_path / "log.db", queue_max=2)
    metrics = Metrics(stats=lambda: store.stats)
    metrics.start("127.0.0.1", 0)
    try:
        results = [store.submit(make_row(id=f"row{n}", started_ms=n, started_at="t")) for n in range(3)]
        assert results == [True, True, False]
        samples = scrape(metrics)
        assert total(samples, "meterway_log_rows_queued") == 2
        assert total(samples, "meterway_log_rows_dropped_total") == 1
        store.start()
        store.stop()
        samples = scrape(metrics)
        assert total(samples, "meterway_log_rows_written_total") == 2
        assert total(samples, "meterway_log_rows_queued") == 0
    finally:
        metrics.stop()


def test_busy_port_does_not_raise():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = Metrics()
        metrics.start("127.0.0.1", port)
        assert metrics._server is None
        metrics.observe(make_row())  # counting still works without an endpoint


def test_stats_addr_off(tmp_path: Path):
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG.replace("127.0.0.1:0", "off"), encoding="utf-8")
    metrics = Metrics()
    metrics.reconfigure(load_config(path))
    assert metrics.address is None
    assert metrics._server is None
