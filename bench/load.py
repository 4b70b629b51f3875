"""Plain-request load: wrk with a Lua script when it is installed, else `bench.client plain`.

Both run in their own process, stop after `duration` seconds, and return the same fields:
`requests`, `errors`, `rps`, `p50_ms`, `p99_ms` and `tool`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.client import CHAT_PATH, CLIENT_KEY, chat_body, check_loopback

logger = logging.getLogger(__name__)

# wrk calls done() once at the end; it prints one line that run_wrk parses. Latencies are in
# microseconds. Status errors are responses outside 2xx and 3xx.
_LUA = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"

-- A safety bound on the count besides wrk's duration. NOTE: a thread that stops early still
-- reports the full duration, so run_wrk marks a capped result instead of trusting its rate.
local responses = 0
response = function(status, headers, body)
  responses = responses + 1
  if responses >= %(max_requests)d then wrk.thread:stop() end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"socket_errors\\": %%d, " ..
    "\\"status_errors\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_path() -> str | None:
    """Return the wrk executable, or None when it is not installed."""
    return shutil.which("wrk")


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(url: str, concurrency: int, duration: float, model: str = "gpt-4o-mini",
            max_requests: int | None = None) -> dict:
    """Run wrk for `duration` seconds with `concurrency` connections on one thread.

    `max_requests` (default 50,000 per second of duration, beyond any target here) stops it
    early as a safety bound; the result then has `capped` set.
    """
    check_loopback(url)
    max_requests = max_requests or int(duration * 50_000)
    body = json.dumps(chat_body(model, stream=False))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_LUA % {"body": _lua_string(body), "key": CLIENT_KEY, "max_requests": max_requests})
    seconds = max(1, round(duration))
    command = [wrk_path() or "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s",
               "-s", script.name, url + CHAT_PATH]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (exit {done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = raw["socket_errors"] + raw["status_errors"]
    good = max(0, raw["requests"] - raw["status_errors"])
    elapsed = raw["duration_us"] / 1e6
    return {"tool": "wrk", "requests": good, "errors": errors, "seconds": elapsed,
            "rps": good / elapsed if elapsed else 0.0, "capped": raw["requests"] >= max_requests,
            "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000}


def run_python_client(url: str, concurrency: int, duration: float, model: str = "gpt-4o-mini") -> dict:
    """Run the asyncio client in its own process for `duration` seconds."""
    command = [sys.executable, "-m", "bench.client", "plain", "--url", url, "--concurrency", str(concurrency),
               "--duration", str(duration), "--model", model]
    result = run_json(command, timeout=duration + 60)
    result["tool"] = "python"
    return result


def run_json(command: list[str], timeout: float) -> dict:
    """Run a client command and parse the JSON object it prints last."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed with exit {done.returncode}: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_plain(url: str, concurrency: int, duration: float, tool: str = "auto") -> dict:
    """Measure non-streamed requests with wrk (`tool` auto or wrk) or the Python client."""
    if tool == "wrk" or (tool == "auto" and wrk_path()):
        return run_wrk(url, concurrency, duration)
    return run_python_client(url, concurrency, duration)
