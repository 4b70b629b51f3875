"""Time the Analytics page on a large request log.

    python -m bench.ui_bench [--rows 1000000] [--days 30] [--db PATH] [--repeat 3]

Builds the log with `bench.gen_requests` unless `--db` names an existing one. Then, for each
preset, group-by and filter in `CASES`, it starts a fresh Python process with its own
Datasette, so no page cache, bucket cache or SQLite connection is carried over from another
case. That process first requests the 1 h view (which loads the templates and opens the
connections but reads none of the tables a long range reads), then requests the case once
(cold) and `--repeat` more times (warm). It prints the cold time and the median of the warm
ones. Datasette's default limits stay in force (1 s per query), so a query that is too slow
shows up as a 504, not as a long time.

NOTE: the operating system's file cache is not dropped between cases, so "cold" means a new
process on a file the OS may already hold in memory, not a cold disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from datasette.app import Datasette

# (preset, group-by, extra query string; the viewer's offset is UTC unless it sets `tz`).
# Filtered views read `rollup_hour` (see datasette_plugins/analytics_data.py), so two
# filtered cases show that slower path.
CASES = [("1h", "model", ""), ("24h", "model", ""), ("7d", "model", ""), ("30d", "model", ""),
         ("30d", "provider", ""), ("30d", "route", ""), ("30d", "status", ""),
         ("30d", "client", ""), ("30d", "model", "tz=330"), ("30d", "model", "client=laptop"),
         ("30d", "provider", "status=5xx")]


async def _measure_case(db_path: Path, preset: str, group: str, extra: str,
                        repeat: int) -> tuple[int, list[float]]:
    # The startup warm-up is off, so the case starts from an empty cache on any file.
    datasette = Datasette([str(db_path)], metadata={"plugins": {"meterway": {"warm_cache": False}}})
    await datasette.invoke_startup()
    await datasette.client.get("/-/meterway?range=1h&tz=0")
    path = f"/-/meterway?range={preset}&group={group}" + ("" if "tz=" in extra else "&tz=0")
    path += f"&{extra}" if extra else ""
    times, status = [], 0
    for _ in range(1 + repeat):
        start = time.perf_counter()
        response = await datasette.client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        status = max(status, response.status_code)
    return status, times


def _run_case_process(db_path: Path, case: tuple[str, str, str], repeat: int) -> tuple[int, list[float]]:
    """Measure one case in a new interpreter and return its status and times."""
    command = [sys.executable, "-m", "bench.ui_bench", "--db", str(db_path), "--repeat", str(repeat),
               "--one-case", json.dumps(case)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    status, times = json.loads(done.stdout.strip().splitlines()[-1])
    return status, times


def main(argv: list[str] | None = None) -> int:
    """Generate or reuse a log, time the Analytics page, and print a table of the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.ui_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="requests to generate")
    parser.add_argument("--days", type=int, default=30, help="days the generated requests span")
    parser.add_argument("--db", type=Path, default=Path("bench/results/ui-bench.db"),
                        help="log to use; generated when the file does not exist")
    parser.add_argument("--repeat", type=int, default=3, help="requests per case after the first")
    parser.add_argument("--one-case", help=argparse.SUPPRESS)  # used by the per-case processes
    args = parser.parse_args(argv)

    if args.one_case:
        preset, group, extra = json.loads(args.one_case)
        print(json.dumps(asyncio.run(_measure_case(args.db, preset, group, extra, args.repeat))))
        return 0

    if not args.db.exists():
        args.db.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {args.rows:,} rows over {args.days} days into {args.db} ...", flush=True)
        subprocess.run([sys.executable, "-m", "bench.gen_requests", str(args.db),
                        "--rows", str(args.rows), "--days", str(args.days)], check=True)

    print(f"Analytics page on {args.db} (a fresh process per case, then {args.repeat} warm requests)")
    print(f"{'range':>6} {'group':>9} {'filter':>14} {'status':>6} {'cold ms':>8} {'warm median ms':>15}",
          flush=True)
    statuses = []
    for case in CASES:
        status, times = _run_case_process(args.db, case, args.repeat)
        statuses.append(status)
        warm = statistics.median(times[1:]) if len(times) > 1 else float("nan")
        preset, group, extra = case
        print(f"{preset:>6} {group:>9} {extra or '-':>14} {status:>6} {times[0]:>8.0f} {warm:>15.0f}",
              flush=True)
    return 0 if all(status == 200 for status in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
