"""The Datasette plugins on a real request log written by `RequestStore`."""

from __future__ import annotations

import io
import json
import random
import sqlite3
import time
from pathlib import Path

import pytest
from datasette.app import Datasette
from mitmproxy import io as mitm_io
from mitmproxy.test import tflow

from addons.store import RequestStore
from datasette_plugins.cells import render_request_cell
from datasette_plugins.time_range import HOUR_MS

HOSTILE_PROMPT = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
MODELS = [("MoM", "qwen2.5-coder:7b", "openai", 0.0), ("gpt-4o-mini", "gpt-4o-mini", "openai", 2e-6),
          ("claude-3-5-haiku", "claude-3-5-haiku", "anthropic", 4e-6),
          ("gemini-2.0-flash", "gemini-2.0-flash", "gcp.gemini", None)]


def _flow_blob(request_id: str) -> bytes:
    flow = tflow.tflow(resp=True)
    flow.metadata["meterway"] = {"id": request_id}
    buffer = io.BytesIO()
    mitm_io.FlowWriter(buffer).add(flow)
    return buffer.getvalue()


def _payload(request_id: str, prompt: str, answer: str, status: int) -> dict:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": prompt}]}
    reply = {"choices": [{"message": {"role": "assistant", "content": answer, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}]}}]}
    headers = [["content-type", "application/json"], ["authorization", "[redacted]"]]
    return {
        "client_request": json.dumps({"method": "POST", "url": "http://127.0.0.1:3000/v1/chat/completions",
                                      "headers": headers, "body": json.dumps(body)}),
        "upstream_request": json.dumps({"method": "POST", "url": "https://api.example/v1/chat/completions",
                                        "headers": headers, "body": json.dumps(body)}),
        "response": json.dumps({"status": status, "headers": [], "body": json.dumps(reply)}),
        "request_bytes": 100, "response_bytes": 200, "truncated": 0,
        "flow": _flow_blob(request_id),
    }


def build_sample_log(path: Path, rows: int = 240, now_ms: int | None = None, seed: int = 7) -> list[dict]:
    """Write `rows` requests spread over the last 30 days through RequestStore; return them."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    store = RequestStore(path)
    store.start()
    written = []
    for index in range(rows):
        requested, routed, provider, price = MODELS[index % len(MODELS)]
        # Every fourth row lands in the last hour, so every preset has data.
        age = rng.randint(0, 50 * 60_000) if index % 4 == 0 else rng.randint(0, 30 * 24 * HOUR_MS - 1)
        started = now_ms - age
        status = rng.choice([200, 200, 200, 200, 429, 500, None])
        outcome = {200: "ok", 429: "upstream_error", 500: "upstream_error", None: "client_disconnected"}[status]
        tokens_in, tokens_out = rng.randint(10, 4000), rng.randint(1, 900)
        row = {
            "id": f"req{index:05d}", "started_ms": started, "duration_ms": float(rng.randint(40, 20000)),
            "ttft_ms": float(rng.randint(10, 900)), "status": status, "outcome": outcome,
            "route": rng.choice(["chat", "code"]), "provider": provider, "backend": provider,
            "api": "chat_completions", "client": rng.choice(["alice", "bob", None]), "stream": index % 2,
            "requested_model": requested, "routed_model": routed, "router_outcome": "ok",
            "input_tokens": tokens_in, "cached_input_tokens": tokens_in // 4, "output_tokens": tokens_out,
            "reasoning_tokens": tokens_out // 3, "total_tokens": tokens_in + tokens_out,
            "cost_usd": None if price is None else round((tokens_in + tokens_out) * price, 8),
            "cost_status": "unpriced" if price is None else "priced", "is_replay": 0,
        }
        prompt = HOSTILE_PROMPT if index == 0 else f"question {index} about widgets"
        store.submit(row, _payload(row["id"], prompt, f"answer {index}", status or 0),
                     (prompt, f"answer {index}"))
        written.append(row)
    store.stop()
    return written


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "meterway.db"
    build_sample_log(path)
    return path


@pytest.fixture
async def ds(log_path: Path) -> Datasette:
    datasette = Datasette([str(log_path)])
    await datasette.invoke_startup()
    return datasette


async def test_pages_answer_200(ds: Datasette) -> None:
    for path in ["/-/meterway", "/-/meterway?range=1h", "/-/meterway?range=7d&group=provider",
                 "/-/meterway?range=30d&group=status&measure=cost",
                 "/-/meterway?range=30d&group=client&measure=tokens&provider=openai",
                 "/-/meterway?from=2020-01-01&to=2030-01-01&tz=120",
                 "/meterway/requests", "/meterway/requests?_search=widgets",
                 "/-/meterway/request/req00001"]:
        response = await ds.client.get(path)
        assert response.status_code == 200, path
