"""The request log on its own: rows per second `RequestStore` writes, and event loop lag.

    python -m bench.storebench --seconds 5

Rows have the shape costlog builds: the `requests` columns from a flow record, the three
payload JSON texts, a redacted flow BLOB and the full-text pair. One template is built with
the same helpers costlog uses, and each submitted row is a copy with a new id and time.

While a coroutine submits rows as fast as the queue takes them, a ticker on the same loop
wakes every millisecond and records how late it woke. The same ticker runs first with no
writer, so the two lag figures compare. The longest single `submit()` call is recorded too:
that is the time the loop itself spent in the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mitmproxy.test import tflow

from addons import logrow
from addons.redact import Redactor
from addons.store import RequestStore
from bench.stats import percentile
from bench.upstream import completion_body

TICK_S = 0.001


def template_row() -> tuple[dict, dict, tuple[str, str]]:
    """Build one realistic row, payload and full-text pair with costlog's helpers."""
    flow = tflow.tflow(resp=True)
    body = {"model": "MoM", "messages": [{"role": "system", "content": "You are terse."},
                                         {"role": "user", "content": "Give me a short analysis of forty-two."}]}
    flow.request.method = "POST"
    flow.request.path = "/v1/chat/completions"
    flow.request.headers["content-type"] = "application/json"
    flow.request.headers["authorization"] = "Bearer sk-client-secret"
    flow.request.content = json.dumps(body).encode()
    flow.response.headers["content-type"] = "application/json"
    flow.response.content = completion_body("gpt-4o-2024-08-06")
    redactor = Redactor(frozenset({"sk-client-secret"}))
    rec = {"id": "x", "started_ms": 0, "bind": 3000, "api": "chat_completions", "stream": 0, "client": None,
           "user_agent": "OpenAI/Python 1.50.0", "requested_model": "MoM", "router_model": "gpt-4o",
           "routed_model": "gpt-4o", "route": "route-1", "backend": "openai", "provider": "openai",
           "upstream": "api.openai.com:443", "router_outcome": "ok", "router_ms": 1.7,
           "router_headers": {"x-selected-model": "gpt-4o"}, "outcome": "ok", "error": None,
           "is_replay": 0, "replay_of": None}
    row = logrow.base_row(rec)
    row.update(status=200, duration_ms=412.5, ttft_ms=398.1, response_model="gpt-4o-2024-08-06",
               input_tokens=31, cached_input_tokens=0, cache_write_tokens=0, output_tokens=9,
               reasoning_tokens=0, total_tokens=40, usage_source="provider", cost_usd=0.0001675,
               cost_input_usd=0.0000775, cost_output_usd=0.00009, cost_cache_read_usd=0.0,
               cost_cache_write_usd=0.0, cost_status="priced", price_source="genai-prices 0.2.5")
    client_text, client_body = logrow.request_json(flow.request, 65536, redactor)
    response_body = logrow.StoredBody(flow.response.raw_content, None, 65536, redactor)
    payload = {"client_request": client_text, "upstream_request": client_text,
               "response": logrow.response_json(flow.response, response_body),
               "request_bytes": client_body.original_size, "response_bytes": response_body.original_size,
               "truncated": 0, "body_flags": None, "flow": logrow.flow_blob(flow, None, None, redactor)}
    return row, payload, ("Give me a short analysis of forty-two.", "The benchmark answer is forty-two.")


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        lags.append((loop.time() - expected) * 1000)


async def _measure_idle(seconds: float) -> list[float]:
    lags: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(_ticker(lags, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return lags


async def _submit_rows(store: RequestStore, seconds: float, max_rows: int) -> tuple[int, float]:
    row, payload, fts = template_row()
    submitted = 0
    longest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and submitted < max_rows:
        # Keep the queue short of full: this measures what the writer sustains, not drops.
        if store.stats.queued > 5000:
            await asyncio.sleep(0.002)
            continue
        for _ in range(50):
            now_ms = int(time.time() * 1000)
            copy = {**row, "id": uuid.uuid4().hex, "started_ms": now_ms}
            began = time.perf_counter()
            store.submit(copy, payload, fts)
            longest = max(longest, time.perf_counter() - began)
            submitted += 1
        await asyncio.sleep(0)
    return submitted, longest * 1000


async def run(seconds: float, max_rows: int, folder: Path) -> dict:
    """Measure idle loop lag, then rows per second and loop lag while submitting."""
    idle = await _measure_idle(min(1.0, seconds))
    store = RequestStore(folder / "store-bench.db")
    store.start()
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(lags, stop))
    began = time.monotonic()
    submitted, longest_submit_ms = await _submit_rows(store, seconds, max_rows)
    drain_deadline = time.monotonic() + 60
    while time.monotonic() < drain_deadline:
        stats = store.stats
        if stats.written + stats.failed + stats.dropped >= submitted:
            break
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - began
    stop.set()
    await ticker
    store.stop(timeout=30)
    stats = store.stats
    return {
        "submitted": submitted, "written": stats.written, "dropped": stats.dropped, "failed": stats.failed,
        "seconds": elapsed, "rows_per_s": stats.written / elapsed if elapsed else 0.0,
        "longest_submit_ms": longest_submit_ms,
        "idle_lag_p50_ms": percentile(idle, 50), "idle_lag_p99_ms": percentile(idle, 99),
        "idle_lag_max_ms": max(idle) if idle else None,
        "lag_p50_ms": percentile(lags, 50), "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": max(lags) if lags else None,
        "db_bytes": (folder / "store-bench.db").stat().st_size,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the store benchmark in a temporary folder and print the JSON result."""
    parser = argparse.ArgumentParser(description="Benchmark meterway's SQLite request log writer.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds to keep submitting rows.")
    parser.add_argument("--max-rows", type=int, default=200_000, help="Rows to submit at most.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meterway-storebench-") as folder:
        result = asyncio.run(run(args.seconds, args.max_rows, Path(folder)))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
