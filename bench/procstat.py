"""CPU time and resident memory of a process and its children, read from /proc (Linux).

A `Sampler` thread reads the process tree every `interval` seconds, so it catches the peak RSS
of the proxy during a run; CPU seconds come from utime + stime of every process in the tree.
NOTE: CPU time of children that exited between two samples is not counted.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in brackets may contain spaces, so split after its closing bracket.
    return text[text.rindex(")") + 2:].split()


def children_of(pid: int) -> list[int]:
    """Return the descendants of `pid`, found through each process's parent id."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in parents.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """Return user + system CPU seconds of the given live processes."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / _TICKS


def rss_bytes(pids: list[int]) -> int:
    """Return the summed resident set size of the given live processes."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class Usage:
    cpu_s: float
    rss_start: int
    rss_peak: int
    rss_end: int


class Sampler:
    """Samples a process tree's RSS in a thread between `start()` and `stop()`."""

    def __init__(self, pid: int | None, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_start = 0.0
        self._tree: list[int] = []

    def _refresh_tree(self) -> list[int]:
        assert self.pid is not None
        self._tree = [self.pid, *children_of(self.pid)]
        return self._tree

    def start(self) -> Sampler:
        if self.pid is None:
            return self
        self._cpu_start = cpu_seconds(self._refresh_tree())
        self.samples.append((time.monotonic(), rss_bytes(self._tree)))
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            count += 1
            if count % 20 == 0:  # new worker processes appear rarely; rescan once a second
                self._refresh_tree()
            self.samples.append((time.monotonic(), rss_bytes(self._tree)))

    def stop(self) -> Usage | None:
        """Stop sampling and return CPU seconds used and RSS at start, peak and end."""
        if self.pid is None or self._thread is None:
            return None
        self._stop.set()
        self._thread.join(5)
        tree = self._refresh_tree()
        end = rss_bytes(tree)
        self.samples.append((time.monotonic(), end))
        return Usage(cpu_seconds(tree) - self._cpu_start, self.samples[0][1],
                     max(rss for _, rss in self.samples), end)
