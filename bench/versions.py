"""Measure meterway at several git revisions side by side, to give each change its own effect.

    python -m bench.versions REV [REV ...] [--rounds 2] [--duration 5]

Each revision is checked out as a detached git worktree in a temporary folder and started with
`python -m meterway run` from there, with the benchmark's router config. Within a round every
revision runs once, in order, beside plain mitmdump and the router floor, all against the same
upstream and stand-in router, so that drift of the machine shows up between rounds rather
than between revisions. Prints one Markdown table: req/s at 10 connections, p50 at one
and p99 at one connection, and proxy CPU per request at 10 connections, one column entry per round.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import cases
from bench.load import run_plain
from bench.procstat import Sampler
from bench.targets import (
    REPO, Processes, Target, start_meterway, start_mitmdump, start_router, start_upstream,
)

logger = logging.getLogger(__name__)


def add_worktree(revision: str, parent: Path) -> tuple[str, Path]:
    """Check `revision` out into a new worktree under `parent`; return its short hash and path."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--short", f"{revision}^{{commit}}"],
                           cwd=REPO, capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"unknown git revision {revision!r}; give a commit, branch or tag of {REPO}")
    short = found.stdout.strip()
    path = parent / short
    subprocess.run(["git", "worktree", "add", "--detach", str(path), short], cwd=REPO, check=True,
                   capture_output=True)
    return short, path


def measure(target: Target, duration: float) -> dict:
    """Warm a target up, then measure 10 connections (req/s, CPU) and one connection (p50, p99)."""
    cases.warm_up(target, 40)
    sampler = Sampler(target.pid).start()
    busy = run_plain(target.url, 10, duration)
    usage = sampler.stop()
    cases.probe_ms(target)
    single = run_plain(target.url, 1, duration)
    cpu_ms = usage.cpu_s * 1000 / busy["requests"] if usage is not None and busy["requests"] else None
    return {"rps": busy["rps"], "cpu_ms": cpu_ms, "p50_ms": single["p50_ms"], "p99_ms": single["p99_ms"]}


def _cell(values: list[float | None], digits: int) -> str:
    return " / ".join("–" if value is None else f"{value:,.{digits}f}" for value in values)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.versions", description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="Git revisions to compare, oldest first.")
    parser.add_argument("--rounds", type=int, default=2, help="How many times to measure every revision.")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per load case.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    folder = Path(tempfile.mkdtemp(prefix="meterway-versions-"))
    trees: list[tuple[str, Path]] = []
    procs = Processes(folder)
    results: dict[str, list[dict]] = {}
    try:
        for revision in args.revisions:
            trees.append(add_worktree(revision, folder / "trees"))
        upstream = start_upstream(procs, chunks=120, pace_ms=10.0, bulk_mb=1)
        router = start_router(procs)
        for round_number in range(1, args.rounds + 1):
            runs: list[tuple[str, Path | None]] = [*trees, ("mitmdump", None), ("mitmdump-router", None)]
            for label, path in runs:
                name = f"{label}-r{round_number}"
                if label == "mitmdump":
                    target = start_mitmdump(procs, name, upstream, stream=False)
                elif label == "mitmdump-router":
                    target = start_mitmdump(procs, name, upstream, stream=False, router=router)
                else:
                    target = start_meterway(procs, name, upstream, router, source=path)
                try:
                    results.setdefault(label, []).append(measure(target, args.duration))
                finally:
                    procs.stop(next(p for _, p in procs.running if p.pid == target.pid))
                logger.info("%s: %s", name, results[label][-1])
    finally:
        procs.close()
        for _, path in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, check=False)

    print("| version | req/s, c10 | proxy CPU ms/req, c10 | p50 ms, c1 | p99 ms, c1 |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        print(f"| `{label}` | {_cell([r['rps'] for r in runs], 0)} | {_cell([r['cpu_ms'] for r in runs], 2)} "
              f"| {_cell([r['p50_ms'] for r in runs], 2)} | {_cell([r['p99_ms'] for r in runs], 1)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
