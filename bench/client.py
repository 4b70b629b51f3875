"""The benchmark's HTTP client, run in its own process so it never shares a loop with a target.

    python -m bench.client plain --url URL --concurrency 10 --duration 5 --max-requests 20000
    python -m bench.client streams --url URL --streams 50 --model gpt-4o-mini-paced
    python -m bench.client bulk --url URL

Each mode prints one JSON object on stdout. Every loop stops at its request count or its
deadline, whichever comes first; only 127.0.0.1 URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import aiohttp

from bench.stats import percentile

CHAT_PATH = "/v1/chat/completions"
# The word "analysis" makes the stand-in router pick the gpt-4o route.
PROMPT = "Give me a short analysis of the number forty-two."
# Every request carries this key: LiteLLM's master key, which meterway strips before the upstream.
CLIENT_KEY = "sk-bench-client-7d41c0e9a2b65f38"
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}


def chat_body(model: str, stream: bool) -> dict:
    """Build the chat completion request every target receives."""
    body: dict = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
    if stream:
        body["stream"] = True
    return body


def check_loopback(url: str) -> None:
    """Raise ValueError unless `url` points at 127.0.0.1, the only address benchmarks may load."""
    host = urlsplit(url).hostname
    if host != "127.0.0.1":
        raise ValueError(f"benchmark URL {url!r} is not on 127.0.0.1; load only local targets")


async def run_plain(url: str, concurrency: int, duration: float, max_requests: int, model: str) -> dict:
    """Send non-streamed requests from `concurrency` workers until the count or time runs out."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    payload = json.dumps(chat_body(model, stream=False)).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    start = time.perf_counter()
    deadline = start + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            sent = time.perf_counter()
            try:
                async with session.post(url + CHAT_PATH, data=payload, headers=HEADERS) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                latencies.append((time.perf_counter() - sent) * 1000)
            else:
                errors += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed,
            "rps": len(latencies) / elapsed if elapsed else 0.0,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


async def _one_stream(session: aiohttp.ClientSession, url: str, model: str, start: float) -> dict:
    payload = json.dumps(chat_body(model, stream=True)).encode()
    first = None
    received = 0
    try:
        async with session.post(url + CHAT_PATH, data=payload, headers=HEADERS) as response:
            if response.status != 200:
                await response.read()
                return {"ok": False, "error": f"status {response.status}"}
            async for data in response.content.iter_any():
                if first is None and data:
                    first = time.perf_counter()
                received += len(data)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    end = time.perf_counter()
    return {"ok": received > 0, "ttfb_ms": ((first or end) - start) * 1000,
            "total_ms": (end - start) * 1000, "bytes": received}


async def run_streams(url: str, streams: int, model: str, timeout: float) -> dict:
    """Open `streams` chat streams at once and time their first byte and their end."""
    connector = aiohttp.TCPConnector(limit=streams)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        start = time.perf_counter()
        results = await asyncio.gather(*(_one_stream(session, url, model, start) for _ in range(streams)))
        wall = time.perf_counter() - start
    good = [r for r in results if r["ok"]]
    ttfb = [r["ttfb_ms"] for r in good]
    total = [r["total_ms"] for r in good]
    errors = [r.get("error", "empty body") for r in results if not r["ok"]]
    return {"streams": streams, "ok": len(good), "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": wall, "ttfb_p50_ms": percentile(ttfb, 50), "ttfb_p99_ms": percentile(ttfb, 99),
            "total_p50_ms": percentile(total, 50), "total_max_ms": max(total) if total else None,
            "bytes": sum(r["bytes"] for r in good)}


async def run_bulk(url: str, timeout: float) -> dict:
    """Stream the bench-bulk response once, reading and discarding it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        start = time.perf_counter()
        result = await _one_stream(session, url, "bench-bulk", start)
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse the mode and its limits, run it, and print the JSON result."""
    parser = argparse.ArgumentParser(description="HTTP load client for meterway benchmarks.")
    modes = parser.add_subparsers(dest="mode", required=True)
    plain = modes.add_parser("plain", help="Non-streamed requests from N workers.")
    plain.add_argument("--concurrency", type=int, required=True)
    plain.add_argument("--duration", type=float, required=True, help="Seconds before the workers stop.")
    plain.add_argument("--max-requests", type=int, default=100_000, help="Requests before the workers stop.")
    plain.add_argument("--model", default="gpt-4o-mini")
    streams = modes.add_parser("streams", help="N concurrent chat streams.")
    streams.add_argument("--streams", type=int, required=True)
    streams.add_argument("--model", default="gpt-4o-mini")
    streams.add_argument("--timeout", type=float, default=120.0, help="Seconds before a stream is abandoned.")
    bulk = modes.add_parser("bulk", help="One large stream (model bench-bulk).")
    bulk.add_argument("--timeout", type=float, default=300.0)
    for sub in (plain, streams, bulk):
        sub.add_argument("--url", required=True, help="Base URL of the target, e.g. http://127.0.0.1:18080.")
    args = parser.parse_args(argv)
    check_loopback(args.url)

    if args.mode == "plain":
        result = asyncio.run(run_plain(args.url, args.concurrency, args.duration, args.max_requests, args.model))
    elif args.mode == "streams":
        result = asyncio.run(run_streams(args.url, args.streams, args.model, args.timeout))
    else:
        result = asyncio.run(run_bulk(args.url, args.timeout))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
