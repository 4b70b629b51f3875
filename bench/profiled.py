"""Run the `meterway` command under cProfile, profiling only a window the benchmark chooses.

    python -m bench.profiled OUT.pstats run CONFIG --upstream ...

SIGUSR1 starts the profiler and SIGUSR2 stops it and writes the stats to OUT.pstats, so
start-up, warm-up and shutdown stay out of the numbers. Only the benchmark uses this.
The main thread runs the event loop and every hook. The request log's writer thread is
measured apart by `bench.storebench`, and `bench.profile_report` leaves thread waits out.
"""

from __future__ import annotations

import cProfile
import signal
import sys
from types import FrameType

from meterway.cli import main as meterway_main


def main() -> int:
    """Run `meterway` with the arguments after the output path, profiling on signal."""
    out, argv = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return meterway_main(argv)


if __name__ == "__main__":
    sys.exit(main())
