"""One benchmark run: start the upstream, measure each target in turn, then the extra parts."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from bench import cases
from bench.litellm_env import VENV as LITELLM_VENV
from bench.litellm_env import LiteLLMUnavailable
from bench.load import run_json, run_plain, wrk_path
from bench.profile_report import summarize
from bench.router_floor import ROUTER_CALL_FAILED
from bench.settings import Settings
from bench.targets import (
    ROUTER_TARGETS, TARGETS, Processes, Target, start_litellm, start_meterway, start_mitmdump, start_router, start_upstream,
)

logger = logging.getLogger(__name__)


def _load_average() -> str:
    """Return the 1-minute load average: other work on the machine skews every number."""
    return f"{os.getloadavg()[0]:.1f}"


def machine_facts() -> dict:
    """Collect the facts a reader needs to compare numbers across machines."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk = wrk_path()
    wrk_version = None
    if wrk:
        done = subprocess.run([wrk, "--version"], capture_output=True, text=True)
        wrk_version = (done.stdout or done.stderr).split("[")[0].strip() or None
    litellm_version = None
    python = LITELLM_VENV / "bin" / "python"
    if python.exists():
        done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                              capture_output=True, text=True)
        litellm_version = done.stdout.strip() or None
    return {"cores": os.cpu_count(), "cpu": cpu, "load_before": _load_average(), "python": platform.python_version(),
            "mitmproxy": metadata.version("mitmproxy"), "aiohttp": metadata.version("aiohttp"),
            "litellm": litellm_version, "wrk": wrk_version, "kernel": platform.release(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _start_target(name: str, procs: Processes, upstream: str, router: str | None) -> Target:
    if name == "direct":
        return Target("direct", upstream, None)
    if name == "meterway":
        return start_meterway(procs, "meterway", upstream, router)
    if name == "meterway-norouter":
        return start_meterway(procs, "meterway-norouter", upstream, None)
    if name == "meterway-2w":
        return start_meterway(procs, name, upstream, router, workers=2)
    if name in ("mitmdump", "mitmdump-stream"):
        return start_mitmdump(procs, name, upstream, stream=name == "mitmdump-stream")
    if name == "mitmdump-router":
        return start_mitmdump(procs, name, upstream, stream=False, router=router)
    return start_litellm(procs, upstream, workers=2 if name == "litellm-2w" else 1)


def measure_target(name: str, procs: Processes, upstream: str, router: str | None, settings: Settings) -> dict:
    """Start one target, run its cases, stop it, and return its results (or why it is missing)."""
    entry: dict = {"description": TARGETS[name], "status": "ok"}
    began = time.monotonic()
    try:
        target = _start_target(name, procs, upstream, router)
    except LiteLLMUnavailable as error:
        logger.warning("litellm is missing: %s", error)
        return {**entry, "status": f"missing: {error}"}
    except (RuntimeError, TimeoutError, OSError) as error:
        logger.error("%s did not start: %s", name, error)
        return {**entry, "status": f"failed to start: {str(error)[:400]}"}
    entry["startup_s"] = time.monotonic() - began
    try:
        cases.warm_up(target, settings.warmup_requests)
        if not target.streams_only:
            entry["plain"] = cases.measure_plain(target, settings)
        entry["streams"] = cases.measure_streams(target, settings)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
        logger.error("%s failed during measurement: %s", name, error)
        entry["status"] = f"failed: {str(error)[:400]}"
    finally:
        process = next((p for n, p in procs.running if p.pid == target.pid), None)
        if process is not None:
            procs.stop(process)
    if name == "mitmdump-router" and target.log is not None:
        failures = target.log.read_text(errors="replace").count(ROUTER_CALL_FAILED)
        if failures:
            entry["status"] = f"failed: {failures} router calls failed, so this is no floor; see {target.log}"
    if name.startswith("meterway"):
        entry["logged_rows"] = cases.logged_rows(target)
        entry["router_outcomes"] = cases.router_outcomes(target)
    return entry


def run_store(settings: Settings) -> dict:
    """Run the request log benchmark in its own process."""
    command = [sys.executable, "-m", "bench.storebench", "--seconds", str(settings.store_seconds)]
    return run_json(command, timeout=settings.store_seconds + 120)


def run_memory(procs: Processes, upstream: str, router: str | None) -> dict:
    """Pass the bench-bulk stream through meterway and report its RSS over the transfer."""
    target = start_meterway(procs, "meterway-memory", upstream, router)
    try:
        # Start from a settled gateway: warmed up, and done loading in background threads.
        cases.warm_up(target, 10)
        cases.wait_for_steady_rss(target)
        return cases.measure_bulk(target, procs.folder)
    finally:
        procs.stop(next(p for _, p in procs.running if p.pid == target.pid))


def run_profile(procs: Processes, upstream: str, router: str | None, settings: Settings) -> dict:
    """Profile meterway (router config) under plain requests at concurrency 10.

    The profiler runs only while the measured load runs: a warm-up and one short burst go
    first, so one-time loads (price data, token encoders) stay out of the per-request figures.
    """
    stats_path = procs.folder / "meterway.pstats"
    target = start_meterway(procs, "meterway-profile", upstream, router, profile_to=stats_path)
    process = next(p for _, p in procs.running if p.pid == target.pid)
    try:
        cases.warm_up(target)
        run_plain(target.url, 10, 1.0, settings.load_client)
        cases.probe_ms(target)  # returns once the burst's cut-off requests are dealt with
        process.send_signal(signal.SIGUSR1)
        load = run_plain(target.url, 10, settings.profile_seconds, settings.load_client)
        process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the stats file may still be being written
    finally:
        procs.stop(process, timeout=60)
    if not stats_path.exists():
        return {"ok": False, "error": f"no profile written; see {procs.folder / 'meterway-profile.log'}"}
    summary = summarize(stats_path)
    summary["rps_under_profiler"] = load["rps"]
    summary["pstats"] = str(stats_path)
    return summary


def _guarded(part: Callable[..., dict], *args: object) -> dict:
    """Run one extra part; a failure becomes an `error` entry in the report, not a lost run."""
    try:
        return part(*args)
    except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired, ValueError) as error:
        logger.error("%s failed: %s", part.__name__, error)
        return {"ok": False, "error": str(error)[:600]}


def run_all(settings: Settings) -> dict:
    """Run every selected target and part; return the results with the machine facts."""
    results: dict = {"machine": machine_facts(), "preset": settings.preset,
                     "settings": {"duration_s": settings.duration, "concurrencies": list(settings.concurrencies),
                                  "stream_counts": list(settings.stream_counts), "chunks": settings.chunks,
                                  "pace_ms": settings.pace_ms, "bulk_mb": settings.bulk_mb,
                                  "load_client": "wrk" if settings.load_client != "python" and wrk_path()
                                  else "python"},
                     "targets": {}}
    folder = Path(tempfile.mkdtemp(prefix="meterway-bench-"))
    results["folder"] = str(folder)
    procs = Processes(folder)
    began = time.monotonic()
    try:
        upstream = start_upstream(procs, settings.chunks, settings.pace_ms, settings.bulk_mb)
        needs_router = bool(ROUTER_TARGETS & set(settings.targets) or {"memory", "profile"} & set(settings.parts))
        router = start_router(procs) if needs_router else None
        if "load" in settings.parts:
            for name in settings.targets:
                logger.info("measuring %s", name)
                results["targets"][name] = measure_target(name, procs, upstream, router, settings)
        if "store" in settings.parts:
            logger.info("measuring the request log writer")
            results["store"] = run_store(settings)
        if "memory" in settings.parts:
            logger.info("streaming %d MB through meterway", settings.bulk_mb)
            results["memory"] = _guarded(run_memory, procs, upstream, router)
        if "profile" in settings.parts:
            logger.info("profiling meterway for %.0f s", settings.profile_seconds)
            results["profile"] = _guarded(run_profile, procs, upstream, router, settings)
    finally:
        procs.close()
    results["elapsed_s"] = time.monotonic() - began
    results["load_after"] = _load_average()
    if settings.preset == "smoke":
        shutil.rmtree(folder, ignore_errors=True)
    return results


def write_json(results: dict, path: str) -> None:
    """Write the raw results as JSON."""
    Path(path).write_text(json.dumps(results, indent=2, sort_keys=True))
