"""A bounded soak run of the real gateway, by hand (not in CI): `python -m bench.soak --minutes 3`.

Everything runs on 127.0.0.1: an OpenAI stand-in upstream, the stand-in ext_proc router, and
`meterway run` as a subprocess. Client workers send a mix of plain and streamed chat requests
for the given time while faults are injected: every `--error-every` seconds the upstream
answers a burst of 500s, and every `--restart-every` seconds the router is stopped for a few
seconds and started again (the policy is `failOpen`, so requests go on). At the end the gateway
is stopped with SIGTERM and the run checks that every request the clients sent has exactly one
row, that the row counts per status equal the clients' counts, and that the gateway's RSS grew
by no more than `--rss-bound-mb` between the end of warm-up and the end of the run.
Exit status 0 means every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.gateway_process import GatewayProcess, free_port
from tests.routerthread import ThreadedRouter
from tests.standins.openai_api import OpenAIStandIn

CONFIG = """\
policies:
- name: {{name: router, namespace: default}}
  target: {{gateway: {{gatewayName: default, gatewayNamespace: default}}}}
  phase: gateway
  policy:
    extProc:
      host: 127.0.0.1:{router_port}
      failureMode: failOpen
      processingOptions: {{requestBodyMode: buffered, responseBodyMode: none}}
binds:
- port: {port}
  listeners:
  - routes:
    - backends:
      - ai: {{name: upstream, provider: {{openAI: {{}}}}, hostOverride: "127.0.0.1:{upstream_port}"}}
config:
  statsAddr: "off"
  readinessAddr: "off"
  database:
    url: sqlite://soak.db
"""


def rss_kb(pid: int) -> int:
    """Return the resident set size of a process in KiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Tally:
    """What the clients saw: request id and status of every answered request."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.by_status: collections.Counter[int] = collections.Counter()
        self.no_answer = 0

    def record(self, response: httpx.Response) -> None:
        self.ids.append(response.headers.get("x-meterway-request-id", ""))
        self.by_status[response.status_code] += 1


async def worker(base: str, stop_at: float, tally: Tally, index: int) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"worker {index} says hello"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        turn = 0
        while time.monotonic() < stop_at:
            turn += 1
            stream = turn % 3 == 0
            try:
                if stream:
                    async with client.stream("POST", f"{base}/v1/chat/completions",
                                             json={**body, "stream": True}) as response:
                        async for _ in response.aiter_bytes():
                            pass
                        tally.record(response)
                else:
                    tally.record(await client.post(f"{base}/v1/chat/completions", json=body))
            except httpx.HTTPError:
                tally.no_answer += 1


def inject_faults(upstream: OpenAIStandIn, router: ThreadedRouter, stop_at: float, error_every: float,
                  restart_every: float, events: list[str]) -> None:
    started = time.monotonic()
    next_error = started + error_every
    next_restart = time.monotonic() + restart_every
    while time.monotonic() < stop_at:
        now = time.monotonic()
        if now >= next_error:
            upstream.always_error = (500, None, None)
            time.sleep(0.5)
            upstream.always_error = None
            events.append(f"at {now - started:.0f} s: upstream 500s for 0.5 s")
            next_error = now + error_every
        if now >= next_restart:
            router.stop()
            time.sleep(2)
            router.start()
            events.append(f"at {now - started:.0f} s: router down for 2 s")
            next_restart = now + restart_every
        time.sleep(0.1)


def database_counts(path: Path) -> tuple[collections.Counter[str], collections.Counter[int], dict[str, int]]:
    conn = sqlite3.connect(path)
    router = {str(row[0]): row[1] for row in conn.execute(
        "select router_outcome, count(*) from requests group by router_outcome")}
    ids = collections.Counter(row[0] for row in conn.execute("select id from requests"))
    by_status = collections.Counter({row[0]: row[1] for row in conn.execute(
        "select status, count(*) from requests group by status")})
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    conn.close()
    return ids, by_status, router


async def soak(args: argparse.Namespace, folder: Path) -> dict:
    upstream = OpenAIStandIn().start_in_thread()
    upstream.auth_required = False
    router_port, port = free_port(), free_port()
    router = ThreadedRouter(port=router_port).start()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(router_port=router_port, port=port, upstream_port=upstream.port))
    gateway = GatewayProcess(config, [port]).start()
    pid = gateway.process.pid
    tally = Tally()
    events: list[str] = []
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    faults = threading.Thread(target=inject_faults, daemon=True,
                              args=(upstream, router, stop_at, args.error_every, args.restart_every, events))
    faults.start()
    samples: list[tuple[float, int]] = []

    async def sample_rss() -> None:
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - started, rss_kb(pid)))
            await asyncio.sleep(5)

    base = f"http://127.0.0.1:{port}"
    await asyncio.gather(sample_rss(), *(worker(base, stop_at, tally, i) for i in range(args.concurrency)))
    faults.join()
    gateway.process.send_signal(signal.SIGTERM)
    exit_status = gateway.process.wait(60)
    router.close()
    upstream.stop_in_thread()

    ids, db_by_status, router_outcomes = database_counts(folder / "soak.db")
    sent = collections.Counter(tally.ids)
    warm = [kb for at, kb in samples if at >= args.warmup] or [samples[-1][1]]
    growth_mb = (samples[-1][1] - warm[0]) / 1024
    report = {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "requests_answered": len(tally.ids),
        "requests_without_answer": tally.no_answer,
        "client_by_status": dict(sorted(tally.by_status.items())),
        "rows_by_status": {str(k): v for k, v in sorted(db_by_status.items(), key=lambda kv: str(kv[0]))},
        "router_outcomes": router_outcomes,
        "ids_missing_in_log": sum(1 for request_id in sent if request_id not in ids),
        "ids_logged_twice": sum(1 for count in ids.values() if count > 1),
        "rss_mb_after_warmup": round(warm[0] / 1024, 1),
        "rss_mb_end": round(samples[-1][1] / 1024, 1),
        "rss_mb_peak": round(max(kb for _, kb in samples) / 1024, 1),
        "rss_growth_mb": round(growth_mb, 1),
        "rss_bound_mb": args.rss_bound_mb,
        "gateway_exit_status": exit_status,
        "faults": events,
    }
    report["ok"] = (
        exit_status == 0 and tally.no_answer == 0 and report["ids_missing_in_log"] == 0
        and report["ids_logged_twice"] == 0 and all(sent[i] == 1 for i in sent)
        and dict(tally.by_status) == {k: v for k, v in db_by_status.items() if k is not None}
        and growth_mb <= args.rss_bound_mb
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """Run one soak and print its figures as JSON; return 0 when every check held."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="Length of the traffic phase, in minutes.")
    parser.add_argument("--concurrency", type=int, default=8, help="Client workers sending at once.")
    parser.add_argument("--error-every", type=float, default=20.0, help="Seconds between upstream 500 bursts.")
    parser.add_argument("--restart-every", type=float, default=45.0, help="Seconds between router restarts.")
    parser.add_argument("--warmup", type=float, default=20.0, help="Seconds before the RSS baseline is taken.")
    parser.add_argument("--rss-bound-mb", type=float, default=40.0,
                        help="Largest RSS growth after warm-up that passes, in MiB.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meterway-soak-") as folder:
        report = asyncio.run(soak(args, Path(folder)))
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
