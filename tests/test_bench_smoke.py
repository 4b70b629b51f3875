"""The benchmark harness in its smoke preset: real upstream, router and `meterway run`, a few
requests per target, direct calls and meterway only, no LiteLLM and no docs update."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import BEGIN, END, render, write_docs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(120)
def test_smoke_runs_both_targets(results: dict) -> None:
    assert list(results["targets"]) == ["direct", "meterway"]
    for name, entry in results["targets"].items():
        assert entry["status"] == "ok", name


@pytest.mark.timeout(120)
def test_smoke_plain_requests_succeed(results: dict) -> None:
    for name, entry in results["targets"].items():
        for concurrency, case in entry["plain"].items():
            assert case["requests"] > 0, (name, concurrency)
            assert case["errors"] == 0, (name, concurrency)
            assert case["p50_ms"] <= case["p99_ms"], (name, concurrency)


@pytest.mark.timeout(120)
def test_smoke_streams_complete(results: dict) -> None:
    for name, entry in results["targets"].items():
        case = entry["streams"]["fast-5"]
        assert case["ok"] == 5, (name, case)
        assert case["ttfb_p50_ms"] <= case["total_max_ms"], name


@pytest.mark.timeout(120)
def test_smoke_meterway_logs_and_routes(results: dict) -> None:
    meterway = results["targets"]["meterway"]
    plain_requests = sum(case["requests"] for case in meterway["plain"].values())
    assert meterway["logged_rows"] >= plain_requests
    assert meterway["router_outcomes"].get("ok", 0) >= plain_requests
    assert meterway["plain"]["1"]["cpu_s"] > 0
    assert meterway["plain"]["1"]["rss_peak_mib"] > 10


@pytest.mark.timeout(120)
def test_smoke_store_writes_every_row(results: dict) -> None:
    store = results["store"]
    assert store["submitted"] > 0
    assert store["written"] == store["submitted"]
    assert store["rows_per_s"] > 0


@pytest.mark.timeout(120)
def test_report_rewrites_only_results(results: dict, tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nMethod text.\n\n{BEGIN}\nold numbers\n{END}\n\nTrailing notes.\n")
    write_docs(docs, render(results))
    text = docs.read_text()
    assert "old numbers" not in text
    assert "Method text." in text
    assert "Trailing notes." in text
    assert "| meterway | 1 |" in text
