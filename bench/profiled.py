"""Run the `meterway` command under cProfile and write the stats when it exits.

    python -m bench.profiled OUT.pstats run CONFIG --upstream ...

Only the benchmark uses this. cProfile sees the main thread, which runs the event loop and
every hook; the request log's writer thread is measured apart by `bench.storebench`.
"""

from __future__ import annotations

import cProfile
import sys

from meterway.cli import main as meterway_main


def main() -> int:
    """Profile `meterway` with the arguments after the output path."""
    out, argv = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return meterway_main(argv)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
