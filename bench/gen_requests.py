"""Fill a request log with realistic synthetic traffic, for the UI and its benchmark.

    python -m bench.gen_requests DB --rows 1000000 --days 30

Rows go through the writer's own code (`prepare()`, `write_batch()`), in batches of 20,000
rather than the writer thread's 500, so `requests`, `payloads`, `requests_fts`, `rollup_hour`
and its narrow summaries come out as the gateway would have written them. The traffic model lives in `bench/traffic_model.py`. The same seed gives the
same rows, except for the ids' random part and the end of the time range, which is now.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import random
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from addons.store import open_for_writing, read_latency_bounds
from addons.store_write import PreparedRow, prepare, write_batch
from bench import traffic_model as tm

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# Relative traffic per UTC hour of day: quiet nights, a working-day plateau, an evening bump.
HOUR_WEIGHTS = (2, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 11, 10, 11, 12, 12, 11, 9, 7, 6, 6, 5, 4, 3)
WEEKEND_FACTOR = 0.35

ROUTER_HEADER = {"ollama": "qwen-coder", "openai": "gpt-4o", "gemini": "gemini-flash"}
RESPONSE_MODEL = {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
                  "gpt-4.1": "gpt-4.1-2025-04-14", "o3-mini": "o3-mini-2025-01-31",
                  "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022"}
API_PATHS = {"chat_completions": "/v1/chat/completions", "responses": "/v1/responses",
             "messages": "/v1/messages", "embeddings": "/v1/embeddings", "models": "/v1/models",
             "generate_content": "/v1beta/models/gemini-2.5-pro:generateContent"}


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def make_timestamps(rng: random.Random, rows: int, days: int, end_ms: int) -> list[int]:
    """Draw sorted start times over the last `days` days, following the day's rhythm."""
    first_hour = (end_ms - days * DAY_MS) // HOUR_MS
    hours = list(range(first_hour, end_ms // HOUR_MS))
    weights = []
    for hour in hours:
        weekday = (hour // 24 + 3) % 7  # 1970-01-01 was a Thursday; 5 and 6 are the weekend
        weights.append(HOUR_WEIGHTS[hour % 24] * (WEEKEND_FACTOR if weekday >= 5 else 1.0))
    picked = rng.choices(hours, weights=weights, k=rows)
    stamps = [hour * HOUR_MS + rng.randrange(HOUR_MS) for hour in picked]
    stamps.sort()
    return stamps


class TrafficGenerator:
    """Draw request rows, payloads and FTS text from the traffic model."""

    def __init__(self, seed: int, payload_fraction: float) -> None:
        self.rng = random.Random(seed)
        self.payload_fraction = payload_fraction
        self.backends = [backend for backend, _ in tm.BACKENDS]
        self.backend_weights = list(itertools.accumulate(weight for _, weight in tm.BACKENDS))
        self.clients = [name for name, _ in tm.CLIENTS]
        self.client_weights = list(itertools.accumulate(weight for _, weight in tm.CLIENTS))
        self.outcomes: list[tuple[float, str]] = []
        threshold = 0.0
        for outcome, (share, _, _) in tm.ERROR_OUTCOMES.items():
            threshold += share
            self.outcomes.append((threshold, outcome))
        self.recent_ids: deque[str] = deque(maxlen=2000)

    def _outcome(self, routed: bool) -> str:
        draw = self.rng.random()
        for threshold, outcome in self.outcomes:
            if draw < threshold:
                # The router can send its own response only for requests it processed.
                return outcome if routed or outcome != "router_response" else "ok"
        return "ok"

    def _api(self, backend: tm.Backend, model: str) -> str:
        rng = self.rng
        if model.startswith("text-embedding"):
            return "embeddings"
        draw = rng.random()
        if draw < 0.01:
            return "models"
        if backend.provider == "anthropic":
            return "messages" if draw < 0.7 else "chat_completions"
        if backend.route == "4000/llm/openai" and draw < 0.2:
            return "responses"
        if backend.route == "4000/llm/gemini" and draw < 0.1:
            return "generate_content"
        return "chat_completions"

    def row(self, started_ms: int) -> tuple[dict[str, Any], dict[str, Any] | None, tuple[str, str] | None]:
        """Draw one request row, with a payload and FTS text for a fraction of them."""
        rng = self.rng
        backend = rng.choices(self.backends, cum_weights=self.backend_weights)[0]
        client = rng.choices(self.clients, cum_weights=self.client_weights)[0]
        row: dict[str, Any] = {
            "id": f"{started_ms:012x}{rng.getrandbits(48):012x}",
            "started_ms": started_ms,
            "client": client,
            "router_outcome": "skipped",
        }

        router_ms = 0.0
        if backend.routed:
            row["requested_model"] = "MoM" if rng.random() < 0.85 else "inteli-llm"
            draw = rng.random()
            if draw < 0.03:
                row["router_outcome"], router_ms, backend = "failed_open", rng.uniform(0.3, 3.0), tm.FALLBACK
            elif draw < 0.04:
                row["router_outcome"], router_ms, backend = "timeout_failed_open", 10_000.0, tm.FALLBACK
            else:
                row["router_outcome"] = "ok"
                router_ms = _lognormal(rng, 28.0, 0.5)
                row["router_headers"] = {"x-selected-model": ROUTER_HEADER[backend.backend]}
            row["router_ms"] = round(router_ms, 2)
            model = backend.models[0]
        else:
            model = rng.choices(backend.models, backend.model_weights)[0]
            row["requested_model"] = model
        row.update(route=backend.route, backend=backend.backend, provider=backend.provider,
                   upstream=backend.upstream, bind=backend.bind, routed_model=model)
        row["user_agent"] = rng.choice(tm.USER_AGENTS[backend.provider])

        api = self._api(backend, model)
        row["api"] = api
        stream = api in ("chat_completions", "messages", "responses") and rng.random() < 0.55
        row["stream"] = int(stream)
        outcome = self._outcome(backend.routed and row["router_outcome"] == "ok")
        row["outcome"] = outcome
        if outcome == "router_response":
            row["router_outcome"] = "immediate_response"
        self._status_and_timing(row, backend, outcome, stream, router_ms)
        self._usage_and_cost(row, backend, model, api, outcome, client)

        if row["status"] is not None and row["status"] < 400 and outcome == "ok":
            row["response_model"] = RESPONSE_MODEL.get(model, model)
        if rng.random() < 0.25:
            row["trace_id"] = f"{rng.getrandbits(128):032x}"
        if self.recent_ids and rng.random() < 0.005:
            row["is_replay"] = 1
            row["replay_of"] = rng.choice(self.recent_ids)
        self.recent_ids.append(row["id"])

        if api == "models" or rng.random() >= self.payload_fraction:
            return row, None, None
        return self._payload(row, api, model, stream)

    def _status_and_timing(self, row: dict[str, Any], backend: tm.Backend, outcome: str,
                           stream: bool, router_ms: float) -> None:
        rng = self.rng
        if outcome != "ok":
            _, statuses, weights = tm.ERROR_OUTCOMES[outcome]
            row["status"] = rng.choices(statuses, weights)[0]
            row["error"] = tm.ERROR_MESSAGES[outcome].format(status=row["status"], upstream=backend.upstream)
        else:
            row["status"] = 200

        ttft = _lognormal(rng, backend.ttft_median_ms, 0.45)
        if rng.random() < 0.02:
            ttft *= rng.uniform(3.0, 15.0)  # cold model loads, provider queues
        generation = _lognormal(rng, 220.0, 1.0) / (backend.tokens_per_second * _lognormal(rng, 1.0, 0.25)) * 1000

        if outcome in ("ok", "client_disconnected"):
            if outcome == "client_disconnected":
                generation *= rng.uniform(0.05, 0.9)
            duration = router_ms + ttft + generation
            if row["api"] == "embeddings":
                duration = router_ms + _lognormal(rng, 120.0, 0.6)
            if stream:
                first_byte = router_ms + ttft
            else:
                first_byte = duration - rng.uniform(0.2, 2.0)
            row["ttft_ms"] = round(first_byte, 2) if row["status"] is not None else None
        elif outcome == "upstream_error":
            duration = router_ms + _lognormal(rng, 300.0, 0.8)
            row["ttft_ms"] = round(duration - 0.5, 2)
        elif outcome == "gateway_error":
            duration = rng.uniform(0.4, 6.0)
        elif outcome == "upstream_unreachable":
            duration = router_ms + rng.uniform(1.0, 3000.0)
        elif outcome == "timeout":
            duration = router_ms + 300_000.0 + rng.uniform(0.0, 50.0)
        else:
            duration = router_ms + rng.uniform(0.5, 3.0)
            row["ttft_ms"] = round(duration - 0.2, 2)
        row["duration_ms"] = round(max(duration, 0.3), 2)

    def _usage_and_cost(self, row: dict[str, Any], backend: tm.Backend, model: str, api: str,
                        outcome: str, client: str | None) -> None:
        rng = self.rng
        has_usage = outcome == "ok" or (outcome == "client_disconnected" and row["status"] is not None)
        if not has_usage or api == "models":
            row.update(usage_source="none", cost_status="no_usage")
            return
        input_tokens = int(_lognormal(rng, 6000.0 if client == "agent-coder" else 900.0, 1.0)) + 5
        output_tokens = 0 if api == "embeddings" else int(_lognormal(rng, 220.0, 1.0)) + 1
        reasoning = 0
        if model in tm.REASONING_MODELS and output_tokens:
            reasoning = int(output_tokens * rng.uniform(0.5, 3.0))
            output_tokens += reasoning
        cached = cache_write = 0
        if backend.provider == "anthropic":
            if rng.random() < 0.3:
                cached = int(input_tokens * rng.uniform(0.3, 0.9))
            elif rng.random() < 0.1:
                cache_write = int(input_tokens * rng.uniform(0.3, 0.9))
        elif not backend.local and rng.random() < 0.35:
            cached = int(input_tokens * rng.uniform(0.3, 0.9)) // 128 * 128
        estimated = outcome == "client_disconnected" or (backend.local and row["stream"] and rng.random() < 0.1)
        row.update(input_tokens=input_tokens, cached_input_tokens=cached, cache_write_tokens=cache_write,
                   output_tokens=output_tokens, reasoning_tokens=reasoning,
                   total_tokens=input_tokens + output_tokens,
                   usage_source="estimated" if estimated else "provider")

        if backend.local:
            row.update(cost_usd=0.0, cost_input_usd=0.0, cost_output_usd=0.0, cost_cache_read_usd=0.0,
                       cost_cache_write_usd=0.0, cost_status="local", price_source="local backend")
            return
        price = tm.PRICES.get(model)
        if price is None:
            row["cost_status"] = "unpriced"
            return
        per_input, per_cached, per_output = (p / 1e6 for p in price)
        parts = {
            "cost_input_usd": (input_tokens - cached - cache_write) * per_input,
            "cost_cache_read_usd": cached * per_cached,
            "cost_cache_write_usd": cache_write * per_input * tm.ANTHROPIC_CACHE_WRITE_FACTOR,
            "cost_output_usd": output_tokens * per_output,
        }
        row.update(parts, cost_usd=sum(parts.values()), cost_status="priced", price_source="genai-prices 0.2.5")

    def _payload(self, row: dict[str, Any], api: str, model: str,
                 stream: bool) -> tuple[dict[str, Any], dict[str, Any], tuple[str, str]]:
        rng = self.rng
        task, topic = rng.choice(tm.TASKS), rng.choice(tm.TOPICS)
        prompt = rng.choice(tm.PROMPTS).format(task=task, topic=topic)
        answer = rng.choice(tm.ANSWERS).format(topic=topic) if row["outcome"] == "ok" else ""
        body = {"model": row["requested_model"], "messages": [{"role": "user", "content": prompt}]}
        if stream:
            body["stream"] = True
        headers = [["content-type", "application/json"], ["authorization", "[redacted]"],
                   ["user-agent", row["user_agent"]]]
        path = API_PATHS[api]
        client_request = json.dumps({"method": "POST", "url": f"http://127.0.0.1:{row['bind']}{path}",
                                     "headers": headers, "body": json.dumps(body)})
        body["model"] = model
        upstream_request = json.dumps({"method": "POST", "url": f"https://{row['upstream']}{path}",
                                       "headers": headers, "body": json.dumps(body)})
        if stream:
            chunks = [json.dumps({"choices": [{"delta": {"content": part}}]}) for part in answer.split(". ")]
            response_body = "".join(f"data: {chunk}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
            content_type = "text/event-stream"
        else:
            response_body = json.dumps({"model": model, "choices": [{"message": {"role": "assistant",
                                                                                 "content": answer}}]})
            content_type = "application/json"
        response = json.dumps({"status": row["status"], "headers": [["content-type", content_type]],
                               "body": response_body})
        payload = {"client_request": client_request, "upstream_request": upstream_request,
                   "response": response, "request_bytes": len(json.dumps(body)),
                   "response_bytes": len(response_body), "truncated": 0, "body_flags": []}
        return row, payload, (prompt, answer)


def _prepare_batch(seed: int, index: int, stamps: list[int], payload_fraction: float,
                   now_ms: int) -> list[PreparedRow]:
    # Each batch has its own seed, so the rows do not depend on how many workers ran.
    generator = TrafficGenerator(seed * 1_000_003 + index, payload_fraction)
    return [prepare(*generator.row(stamp), now_ms) for stamp in stamps]


def generate(path: Path, rows: int, days: int, seed: int, payload_fraction: float,
             batch_size: int = 20_000) -> float:
    """Write `rows` synthetic requests into the request log at `path`; return rows per second.

    Worker processes draw and convert the rows while this process writes, because drawing
    costs about as much CPU as inserting.
    """
    began = time.perf_counter()
    stamps = make_timestamps(random.Random(seed), rows, days, int(time.time() * 1000))
    now_ms = int(time.time() * 1000)
    workers = max(1, (os.cpu_count() or 2) - 1)
    starts = iter(range(0, rows, batch_size))
    pending: deque[Future[list[PreparedRow]]] = deque()
    # The pool starts before the database opens, so no worker inherits the connection.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                chunk = stamps[start:start + batch_size]
                pending.append(pool.submit(_prepare_batch, seed, start // batch_size, chunk,
                                           payload_fraction, now_ms))

        # Keep a few batches in flight, not all of them, to bound memory.
        for _ in range(workers + 1):
            submit_next()
        conn = open_for_writing(path)
        try:
            # A bigger page cache keeps the index pages of a batch in memory (up to 256 MiB).
            conn.execute("PRAGMA cache_size = -262144")
            # A synthetic file is cheap to make again, so skip the syncs that protect real logs.
            conn.execute("PRAGMA synchronous = OFF")
            bounds = read_latency_bounds(conn)
            done = 0
            while pending:
                batch = pending.popleft().result()
                submit_next()
                write_batch(conn, batch, bounds)
                done += len(batch)
                if (done // batch_size) % 10 == 0:
                    print(f"{done:,} rows, {done / (time.perf_counter() - began):,.0f} rows/s", file=sys.stderr)
        finally:
            conn.close()
    return rows / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, fill the database and print the rate."""
    parser = argparse.ArgumentParser(prog="python -m bench.gen_requests", description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="SQLite file to create or append to")
    parser.add_argument("--rows", type=int, default=100_000, help="number of requests to write")
    parser.add_argument("--days", type=int, default=30, help="days back from now that the requests span")
    parser.add_argument("--seed", type=int, default=1, help="random seed, for repeatable traffic")
    parser.add_argument("--payload-fraction", type=float, default=0.2,
                        help="share of requests (0..1) that also get payloads and FTS text")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.days < 1:
        parser.error(f"--rows ({args.rows}) and --days ({args.days}) must be at least 1")
    if not 0.0 <= args.payload_fraction <= 1.0:
        parser.error(f"--payload-fraction {args.payload_fraction} must be between 0 and 1")
    rate = generate(args.db, args.rows, args.days, args.seed, args.payload_fraction)
    print(f"wrote {args.rows:,} requests to {args.db} at {rate:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
