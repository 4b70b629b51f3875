"""Measure meterway at several git revisions side by side, so one change's effect shows.

    python -m bench.versions REV [REV ...] [--rounds 2] [--duration 5]

Each revision is checked out as a detached git worktree in a temporary folder. Only its
`meterway/` and `addons/` code comes from there, through `PYTHONPATH`, and runs as
`python -m meterway run` with the benchmark's router config. The benchmark itself, that
config and the installed packages come from the current checkout.

Every round runs each revision once beside plain mitmdump and the router floor
(`bench/router_floor.py`), against one upstream and one stand-in router. The order rotates
by one place per round, so no revision always runs first or last.

It prints one Markdown table with one value per round in each cell. The columns are req/s
and proxy CPU per request at 10 connections, p50 and p99 at one connection, proxy CPU for
20 fast streams, time to first byte for 20 paced streams, and errors. It writes no docs. The run's folder
(logs, configs, SQLite files) is kept and printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bench import cases
from bench.load import run_plain
from bench.procstat import Sampler
from bench.router_floor import ROUTER_CALL_FAILED
from bench.settings import Settings
from bench.targets import (
    REPO, Processes, Target, start_meterway, start_mitmdump, start_router, start_upstream,
)

logger = logging.getLogger(__name__)

BASELINES = ("mitmdump", "mitmdump-router")
STREAM_SETTINGS = Settings(stream_counts=(20,), stream_modes=("fast", "paced"))


def resolve(revision: str) -> str:
    """Return the short hash of a commit; exit with a message when git does not know it."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--short", f"{revision}^{{commit}}"],
                           cwd=REPO, capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"unknown git revision {revision!r}; give a commit, branch or tag of {REPO}")
    return found.stdout.strip()


def add_worktree(short: str, parent: Path) -> Path:
    """Check commit `short` out into a new worktree under `parent`; return its path."""
    path = parent / short
    done = subprocess.run(["git", "worktree", "add", "--detach", str(path), short], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git worktree add for {short} failed: {done.stderr.strip()}")
    return path


def measure(target: Target, duration: float) -> dict:
    """Warm a target up, then measure 10 connections (req/s, CPU) and one connection (p50, p99)."""
    cases.warm_up(target, 40)
    sampler = Sampler(target.pid).start()
    busy = run_plain(target.url, 10, duration)
    usage = sampler.stop()
    probe = cases.probe_ms(target)
    single = run_plain(target.url, 1, duration)
    cpu_ms = usage.cpu_s * 1000 / busy["requests"] if usage is not None and busy["requests"] else None
    # 20 streams of 120 chunks: as fast as the upstream sends them (the proxy's CPU per chunk
    # shows in the stream CPU), then paced 10 ms apart (time to first byte).
    streams = cases.measure_streams(target, STREAM_SETTINGS)
    errors = busy["errors"] + single["errors"] + (probe is None)
    if target.is_meterway:
        # A revision whose router calls fail open would still serve, and look faster.
        errors += sum(count for outcome, count in cases.router_outcomes(target).items() if "fail" in outcome)
    if target.log is not None and target.name.startswith("mitmdump-router"):
        errors += target.log.read_text(errors="replace").count(ROUTER_CALL_FAILED)
    errors += sum(entry["errors"] for entry in streams.values())
    return {"rps": busy["rps"], "cpu_ms": cpu_ms, "p50_ms": single["p50_ms"], "p99_ms": single["p99_ms"],
            "stream_cpu_s": streams["fast-20"].get("cpu_s"), "paced_ttfb_ms": streams["paced-20"]["ttfb_p50_ms"],
            "errors": errors}


def _cell(values: list[float | None], digits: int) -> str:
    return " / ".join("–" if value is None else f"{value:,.{digits}f}" for value in values)


def _start(label: str, name: str, procs: Processes, upstream: str, router: str, trees: dict[str, Path]) -> Target:
    if label == "mitmdump":
        return start_mitmdump(procs, name, upstream, stream=False)
    if label == "mitmdump-router":
        return start_mitmdump(procs, name, upstream, stream=False, router=router)
    return start_meterway(procs, name, upstream, router, source=trees[label])


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the table; return 1 when any measurement had errors."""
    parser = argparse.ArgumentParser(prog="python -m bench.versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="Git revisions of this repository to compare, oldest first.")
    parser.add_argument("--rounds", type=int, default=2,
                        help="How many times to measure every revision (default 2); about 17 s per target and round.")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per load case (default 5).")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give 1 or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    labels = list(dict.fromkeys(resolve(revision) for revision in args.revisions))  # one entry per commit
    folder = Path(tempfile.mkdtemp(prefix="meterway-versions-"))
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()[0]
    trees: dict[str, Path] = {}
    procs = Processes(folder)
    results: dict[str, list[dict]] = {label: [] for label in [*labels, *BASELINES]}
    try:
        for label in labels:
            trees[label] = add_worktree(label, folder / "trees")
        upstream = start_upstream(procs, chunks=120, pace_ms=10.0, bulk_mb=1)
        router = start_router(procs)
        order = list(results)
        for round_number in range(args.rounds):
            shift = round_number % len(order)
            for label in order[shift:] + order[:shift]:
                target = _start(label, f"{label}-r{round_number + 1}", procs, upstream, router, trees)
                try:
                    results[label].append(measure(target, args.duration))
                finally:
                    procs.stop(next(p for _, p in procs.running if p.pid == target.pid))
                logger.info("%s, round %d: %s", label, round_number + 1, results[label][-1])
    finally:
        procs.close()
        for path in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, check=False)

    print(f"Run of {started}, {args.rounds} round(s) of {args.duration:g} s per case, load average "
          f"{load_before:.2f} before and {os.getloadavg()[0]:.2f} after; logs in {folder}")
    print()
    print("| version | req/s, c10 | proxy CPU ms/req, c10 | p50 ms, c1 | p99 ms, c1 "
          "| proxy CPU s, 20 fast streams | TTFB p50 ms, 20 paced streams | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for label, runs in results.items():
        print(f"| `{label}` | {_cell([r['rps'] for r in runs], 0)} | {_cell([r['cpu_ms'] for r in runs], 2)} "
              f"| {_cell([r['p50_ms'] for r in runs], 2)} | {_cell([r['p99_ms'] for r in runs], 1)} "
              f"| {_cell([r['stream_cpu_s'] for r in runs], 2)} | {_cell([r['paced_ttfb_ms'] for r in runs], 1)} "
              f"| {_cell([r['errors'] for r in runs], 0)} |")
    return 1 if any(r["errors"] for runs in results.values() for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
