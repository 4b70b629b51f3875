"""The measurements on one running target: plain requests at each concurrency, then streams."""

from __future__ import annotations

import http.client
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path

from bench.client import CHAT_PATH, HEADERS, chat_body
from bench.load import run_json, run_plain
from bench.procstat import Sampler, rss_bytes
from bench.settings import Settings
from bench.targets import Target

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def _with_usage(result: dict, usage: object | None) -> dict:
    if usage is not None:
        result["cpu_s"] = usage.cpu_s
        result["rss_peak_mib"] = usage.rss_peak / MIB
        requests = result.get("requests") or result.get("ok") or 0
        result["cpu_ms_per_request"] = usage.cpu_s * 1000 / requests if requests else None
    return result


def warm_up(target: Target, requests: int = 40) -> None:
    """Send `requests` plain requests and 2 streams, and wait for them to finish.

    The first requests through a fresh gateway load price data and encoders; a time-bounded
    warm-up could leave them in flight into the first measured case.
    """
    run_json([sys.executable, "-m", "bench.client", "plain", "--url", target.url, "--concurrency", "2",
              "--duration", "30", "--max-requests", str(requests)], timeout=60)
    run_json([sys.executable, "-m", "bench.client", "streams", "--url", target.url, "--streams", "2"], timeout=60)
    if target.is_meterway:
        load_tokenizer(target)


# meterway logs this line when a worker has built a tiktoken encoding.
_TOKENIZER_LOADED = "loaded tiktoken encoding"


def load_tokenizer(target: Target, timeout: float = 60.0) -> None:
    """Make each meterway worker build its tokenizer before the measured cases.

    meterway builds an encoding in a thread the first time a reply lacks usage. At the end of
    every case the load tool cuts the requests in flight, and meterway counts their tokens
    itself. Without this step the build (about 1.5 s of CPU) would land inside the next
    measured case; a long-running gateway pays it once.
    Each request opens a new connection, so the kernel spreads them over all workers.
    """
    assert target.log is not None and target.folder is not None
    deadline = time.monotonic() + timeout
    sent = 0
    while time.monotonic() < deadline:
        if target.log.read_text(errors="replace").count(_TOKENIZER_LOADED) >= target.workers:
            break
        if _send_plain(target, "gpt-4o-mini-nousage"):
            sent += 1
        time.sleep(0.1)
    else:
        raise RuntimeError(f"{target.name} did not load its tokenizer within {timeout:g} s; see {target.log}")
    # The rows waiting for the encoding are written once it is built: wait for all of them.
    while time.monotonic() < deadline:
        if _count_rows(target, "usage_source = 'estimated'") >= sent:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{target.name} logged fewer than {sent} estimated rows within {timeout:g} s")


def _send_plain(target: Target, model: str, timeout: float = 60.0) -> bool:
    """Send one plain chat request on a new connection; return whether it got a 200."""
    host, port = target.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", CHAT_PATH, body=json.dumps(chat_body(model, stream=False)), headers=HEADERS)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def probe_ms(target: Target, timeout: float = 60.0) -> float | None:
    """Time one plain request right after a case; None if it failed.

    wrk cuts the requests still in flight when its time is up, so the proxy gets client
    disconnects. This probe shows how long the proxy then takes to answer again, and waiting
    for it keeps that recovery out of the next case.
    """
    began = time.perf_counter()
    ok = _send_plain(target, "gpt-4o-mini", timeout)
    return (time.perf_counter() - began) * 1000 if ok else None


def measure_plain(target: Target, settings: Settings) -> dict[str, dict]:
    """Measure requests per second and latency at each concurrency, with the proxy's CPU and RSS."""
    results: dict[str, dict] = {}
    for concurrency in settings.concurrencies:
        sampler = Sampler(target.pid).start()
        result = run_plain(target.url, concurrency, settings.duration, settings.load_client)
        results[str(concurrency)] = _with_usage(result, sampler.stop())
        result["probe_after_ms"] = probe_ms(target)
        logger.info("%s c=%d: %.0f rps, p50 %.2f ms, p99 %.2f ms, %d errors", target.name, concurrency,
                    result["rps"], result["p50_ms"] or 0, result["p99_ms"] or 0, result["errors"])
    return results


def stream_model(mode: str) -> str:
    """Return the model name that makes the upstream stream fast or paced."""
    return "gpt-4o-mini-paced" if mode == "paced" else "gpt-4o-mini"


def measure_streams(target: Target, settings: Settings) -> dict[str, dict]:
    """Time concurrent streams, fast and paced, at each stream count."""
    results: dict[str, dict] = {}
    for mode in settings.stream_modes:
        for count in settings.stream_counts:
            command = [sys.executable, "-m", "bench.client", "streams", "--url", target.url,
                       "--streams", str(count), "--model", stream_model(mode), "--timeout", "120"]
            sampler = Sampler(target.pid).start()
            result = run_json(command, timeout=180)
            results[f"{mode}-{count}"] = _with_usage(result, sampler.stop())
            logger.info("%s %s x%d: wall %.2f s, TTFB p50 %.1f ms, %d errors", target.name, mode, count,
                        result["wall_s"], result["ttfb_p50_ms"] or 0, result["errors"])
    return results


def logged_rows(target: Target) -> int | None:
    """Count the rows a meterway target wrote to its request log, or None without one."""
    return _count_rows(target) if target.folder is not None and (target.folder / "bench.db").exists() else None


def _count_rows(target: Target, where: str = "1") -> int:
    """Count a meterway target's logged rows that match `where`; 0 before the log exists."""
    database = target.folder / "bench.db" if target.folder else None
    if database is None or not database.exists():
        return 0
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return conn.execute(f"select count(*) from requests where {where}").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def router_outcomes(target: Target) -> dict[str, int]:
    """Count the router outcomes in a meterway target's log (shows whether the router ran)."""
    database = target.folder / "bench.db" if target.folder else None
    if database is None or not database.exists():
        return {}
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("select coalesce(router_outcome, 'none'), count(*) from requests group by 1").fetchall()
        return {name: count for name, count in rows}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def wait_for_steady_rss(target: Target, timeout: float = 30.0) -> None:
    """Wait until the target's RSS changes by less than 1 MiB in a second, or `timeout` passes."""
    if target.pid is None:
        return
    deadline = time.monotonic() + timeout
    last = rss_bytes([target.pid])
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = rss_bytes([target.pid])
        if abs(now - last) < MIB:
            return
        last = now


def measure_bulk(target: Target, folder: Path) -> dict:
    """Stream the bench-bulk response through the target while sampling its RSS."""
    sampler = Sampler(target.pid, interval=0.05).start()
    result = run_json([sys.executable, "-m", "bench.client", "bulk", "--url", target.url, "--timeout", "300"],
                      timeout=360)
    usage = sampler.stop()
    if usage is not None:
        result.update(rss_start_mib=usage.rss_start / MIB, rss_peak_mib=usage.rss_peak / MIB,
                      rss_end_mib=usage.rss_end / MIB, cpu_s=usage.cpu_s)
    if result.get("seconds"):
        result["mib_per_s"] = result.get("bytes", 0) / MIB / result["seconds"]
    return result
