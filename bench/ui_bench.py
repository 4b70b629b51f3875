"""Time the Analytics page on a large request log.

    python -m bench.ui_bench [--rows 1000000] [--days 30] [--db PATH] [--repeat 3]

Builds the log with `bench.gen_requests` unless `--db` names an existing one. Then it
requests the Analytics page through Datasette's in-process client for each preset and
group-by. It prints the time of the first request (empty cache) and the median of the rest. Datasette's default limits stay in
force (1 s per query), so a query that is too slow shows up as a 504, not as a long time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from datasette.app import Datasette

from datasette_plugins import range_cache

CASES = [("1h", "model"), ("24h", "model"), ("7d", "model"), ("30d", "model"),
         ("30d", "provider"), ("30d", "status"), ("30d", "client")]


async def _measure(db_path: Path, repeat: int) -> list[tuple[str, str, int, float, float]]:
    # The startup warm-up is off, so every case starts from an empty cache.
    datasette = Datasette([str(db_path)], metadata={"plugins": {"meterway": {"warm_cache": False}}})
    await datasette.invoke_startup()
    await datasette.client.get("/-/meterway?range=1h")  # Load templates and the SQLite cache.
    results = []
    for preset, group in CASES:
        range_cache._cache.clear()
        times, status = [], 0
        for _ in range(1 + repeat):
            start = time.perf_counter()
            response = await datasette.client.get(f"/-/meterway?range={preset}&group={group}&tz=0")
            times.append((time.perf_counter() - start) * 1000)
            status = max(status, response.status_code)
        results.append((preset, group, status, times[0], statistics.median(times[1:])))
    return results


def main(argv: list[str] | None = None) -> int:
    """Generate or reuse a log, time the Analytics page, and print a table of the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.ui_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="requests to generate")
    parser.add_argument("--days", type=int, default=30, help="days the generated requests span")
    parser.add_argument("--db", type=Path, default=Path("bench/results/ui-bench.db"),
                        help="log to use; generated when the file does not exist")
    parser.add_argument("--repeat", type=int, default=3, help="requests per case after the first")
    args = parser.parse_args(argv)

    if not args.db.exists():
        args.db.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {args.rows:,} rows over {args.days} days into {args.db} ...", flush=True)
        subprocess.run([sys.executable, "-m", "bench.gen_requests", str(args.db),
                        "--rows", str(args.rows), "--days", str(args.days)], check=True)

    results = asyncio.run(_measure(args.db, args.repeat))
    print(f"Analytics page on {args.db} ({args.repeat} requests per case)")
    print(f"{'range':>6} {'group':>9} {'status':>6} {'cold ms':>8} {'warm median ms':>15}")
    for preset, group, status, cold, warm in results:
        print(f"{preset:>6} {group:>9} {status:>6} {cold:>8.0f} {warm:>15.0f}")
    return 0 if all(status == 200 for _, _, status, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
