"""`meterway run --workers N`: N gateway processes on the same ports, and a supervisor.

One mitmproxy process runs its event loop on one core. With `--workers N` the supervisor
starts N `meterway run` processes whose listeners bind with SO_REUSEPORT, so the kernel
spreads connections over them, and it:
- serves `config.statsAddr` with the sum of the workers' metrics, each worker serving its own
  on a private loopback port (every gateway metric is a counter, a histogram or a queue
  length, so the sum is the gateway's value);
- serves `config.readinessAddr`, ready when every worker is;
- forwards SIGINT and SIGTERM, so each worker drains as a single gateway does, and restarts a
  worker that exits on its own.
Each worker writes the request log through its own writer process; SQLite's lock orders
their transactions and the writers retry while the file is busy, so no row is lost.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# A worker that exits this soon after its start twice in a row is failing to start, for
# example on a port another program uses, so the supervisor stops instead of looping.
QUICK_EXIT_SECONDS = 5.0
# How long workers get to drain after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 60.0
SCRAPE_TIMEOUT_SECONDS = 2.0


def free_ports(count: int) -> list[int]:
    """Return `count` different TCP ports on 127.0.0.1 that are free right now.

    The sockets stay bound until all are chosen, so no port comes back twice.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Worker:
    index: int
    stats_port: int
    ready_port: int
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    incarnation: int = 0  # how many times it was started
    ready_incarnation: int = 0  # the incarnation the readiness probe last found ready

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/metrics"

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.ready_port}/healthz/ready"


@dataclass
class Supervisor:
    """Starts the workers, keeps them running and serves their summed metrics and readiness."""

    config: Path
    count: int
    worker_args: Sequence[str]
    workers: list[Worker] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    stop_signal: int = signal.SIGTERM  # the signal stop() sent to the workers

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.count)
        self.workers = [Worker(index, ports[2 * index], ports[2 * index + 1]) for index in range(self.count)]

    def command(self, worker: Worker) -> list[str]:
        return [sys.executable, "-m", "meterway", "run", str(self.config), *self.worker_args,
                "--worker", f"{worker.index}/{self.count}",
                "--worker-stats", f"127.0.0.1:{worker.stats_port}",
                "--worker-ready", f"127.0.0.1:{worker.ready_port}"]

    def start(self, worker: Worker) -> None:
        # A group of its own: Ctrl-C in a terminal then reaches the supervisor only, which
        # forwards one SIGTERM, instead of every worker getting two signals.
        worker.process = subprocess.Popen(self.command(worker), process_group=0)
        worker.started_at = time.monotonic()
        worker.incarnation += 1
        logger.info("worker %d (pid %d): metrics on 127.0.0.1:%d, readiness on 127.0.0.1:%d",
                    worker.index, worker.process.pid, worker.stats_port, worker.ready_port)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask every worker to drain and stop; called from a signal handler."""
        if not self.stopping.is_set():
            logger.info("stopping %d workers: each drains its requests in flight", self.count)
        self.stopping.set()
        self.stop_signal = signum
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signum)

    def run(self) -> int:
        """Run the workers until SIGINT or SIGTERM; return 0 when all of them ended cleanly."""
        for worker in self.workers:
            self.start(worker)
        while not self.stopping.wait(0.5):
            for worker in self.workers:
                if not self._check(worker):
                    self.stop()
                    self.wait()
                    return 1
        return self.wait()

    def _check(self, worker: Worker) -> bool:
        """Restart a worker that exited on its own; return False when it keeps failing to start."""
        assert worker.process is not None
        status = worker.process.poll()
        if status is None or self.stopping.is_set():
            return True
        lived = time.monotonic() - worker.started_at
        worker.quick_exits = worker.quick_exits + 1 if lived < QUICK_EXIT_SECONDS else 0
        if worker.quick_exits >= 2:
            cause = (f"it was killed by signal {-status}" if status < 0
                     else "its output above says why")
            logger.error("worker %d exited with status %s less than %.0f s after its start, twice in a "
                         "row; stopping the gateway (%s)", worker.index, status, QUICK_EXIT_SECONDS, cause)
            return False
        logger.warning("worker %d exited with status %s after %.0f s; starting it again",
                       worker.index, status, lived)
        self.start(worker)
        return True

    def wait(self) -> int:
        """Wait for every worker to end, killing those still running after the grace period."""
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        status = 0
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                code = worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker %d did not stop within %.0f s; killing it", worker.index, STOP_GRACE_SECONDS)
                worker.process.kill()
                code = worker.process.wait()
            if code == -self.stop_signal and self.stopping.is_set():
                # A serving worker handles the stop signal and exits by itself, so dying of it
                # means the worker was still starting, with nothing in flight: a clean stop.
                code = 0
            if code != 0 and not status:
                status = code if code > 0 else 1  # a negative code is the signal that killed it
        logger.info("all %d workers stopped%s", self.count, f"; exit status {status}" if status else "")
        return status


# One sample of a family: (family name, sample name, sorted labels).
SampleKey = tuple[str, str, tuple[tuple[str, str], ...]]
# Families whose samples only grow while a worker lives (a restart starts them at zero).
_GROWING = ("counter", "histogram", "summary")
# How often the supervisor scrapes the workers between Prometheus scrapes, so a worker that
# dies takes at most this much of its counting with it.
REFRESH_SECONDS = 5.0


@dataclass
class _WorkerSamples:
    incarnation: int = 0
    growing: dict[SampleKey, float] = field(default_factory=dict)  # at the last scrape
    carried: dict[SampleKey, float] = field(default_factory=dict)  # from earlier incarnations
    gauges: dict[SampleKey, float] = field(default_factory=dict)
    created: dict[SampleKey, float] = field(default_factory=dict)
    answered: bool = False


class SummedMetrics(Collector):
    """Add up the workers' samples with the same name and labels.

    A worker that is restarted counts from zero again, so its counters and histograms keep
    what its earlier incarnations counted up to their last scrape: the sums never go down,
    which Prometheus would read as a reset. Gauges come from the workers reached in this scrape.
    """

    def __init__(self, workers: Sequence[Worker]) -> None:
        self._workers = workers
        self._samples = {worker.index: _WorkerSamples() for worker in workers}
        self._families: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Scrape every worker now."""
        for worker in self._workers:
            try:
                with urllib.request.urlopen(worker.metrics_url, timeout=SCRAPE_TIMEOUT_SECONDS) as reply:
                    text = reply.read().decode()
            except (OSError, urllib.error.URLError) as error:
                # Usually a worker that is restarting; `meterway_workers_scraped` counts the others.
                logger.warning("metrics of worker %d not read: %s", worker.index, error)
                with self._lock:
                    self._samples[worker.index].answered = False
                continue
            growing: dict[SampleKey, float] = {}
            gauges: dict[SampleKey, float] = {}
            created: dict[SampleKey, float] = {}
            families = {}
            for family in text_string_to_metric_families(text):
                families[family.name] = (family.documentation, family.type)
                for sample in family.samples:
                    key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                    if sample.name.endswith("_created"):
                        created[key] = sample.value
                    elif family.type in _GROWING:
                        growing[key] = sample.value
                    else:
                        gauges[key] = sample.value
            with self._lock:
                self._families.update(families)
                state = self._samples[worker.index]
                if state.incarnation != worker.incarnation:
                    for key, value in state.growing.items():
                        state.carried[key] = state.carried.get(key, 0.0) + value
                    state.incarnation = worker.incarnation
                state.growing, state.gauges, state.created, state.answered = growing, gauges, created, True

    def collect(self) -> Iterator[Metric]:
        self.refresh()
        sums: dict[SampleKey, float] = {}
        oldest: dict[SampleKey, float] = {}
        with self._lock:
            answered = sum(state.answered for state in self._samples.values())
            for state in self._samples.values():
                for part in (state.carried, state.growing) + ((state.gauges,) if state.answered else ()):
                    for key, value in part.items():
                        sums[key] = sums.get(key, 0.0) + value
                for key, value in state.created.items():
                    # A creation time is not a count, so the oldest one is used for the sum.
                    oldest[key] = min(oldest.get(key, value), value)
            families = dict(self._families)
        metrics = {name: Metric(name, documentation, kind) for name, (documentation, kind) in families.items()}
        for values in (sums, oldest):
            for (name, sample_name, labels), value in sorted(values.items()):
                if name in metrics:
                    metrics[name].add_sample(sample_name, dict(labels), value)
        yield from metrics.values()
        scraped = Metric("meterway_workers_scraped", "Worker processes whose metrics this scrape added up.",
                         "gauge")
        scraped.add_sample("meterway_workers_scraped", {}, answered)
        yield scraped


def serve_metrics(workers: Sequence[Worker], host: str, port: int, stop: threading.Event) -> Any:
    """Serve the workers' summed metrics on host:port until `stop` is set; return the server."""
    summed = SummedMetrics(workers)
    registry = CollectorRegistry()
    registry.register(summed)
    server, _thread = start_http_server(port, addr=host, registry=registry)

    def keep_fresh() -> None:
        while not stop.wait(REFRESH_SECONDS):
            summed.refresh()

    threading.Thread(target=keep_fresh, name="meterway-metrics-refresh", daemon=True).start()
    logger.info("metrics of all workers: http://%s:%d/metrics", host, server.server_port)
    return server


# How long a started worker that is not ready yet counts as starting rather than as failing.
STARTING_GRACE_SECONDS = 30.0


def readiness(workers: Sequence[Worker]) -> tuple[list[str], list[str]]:
    """Return what keeps the gateway from being ready, and which workers do not respond.

    A worker that answers with problems makes the gateway not ready, because it still takes
    its share of connections. A worker that does not answer (it is starting or restarting)
    has no listener either, so the kernel sends its connections to the others: the gateway
    stays ready while at least one worker is. A worker that was restarted and has not been
    ready since (its router channel still connecting, say) counts as starting too, for up to
    STARTING_GRACE_SECONDS.
    """
    problems: list[str] = []
    down: list[str] = []
    for worker in workers:
        try:
            with urllib.request.urlopen(worker.ready_url, timeout=SCRAPE_TIMEOUT_SECONDS):
                worker.ready_incarnation = worker.incarnation
                continue
        except urllib.error.HTTPError as error:
            try:
                found = json.loads(error.read()).get("problems") or [f"answered {error.code}"]
            except ValueError:
                found = [f"answered {error.code}"]
            starting = (worker.ready_incarnation != worker.incarnation
                        and time.monotonic() - worker.started_at < STARTING_GRACE_SECONDS)
            if starting:
                down.append(f"worker {worker.index} is starting: {'; '.join(found)}")
            else:
                problems += [f"worker {worker.index}: {problem}" for problem in found]
        except OSError as error:
            reason = getattr(error, "reason", error)
            down.append(f"worker {worker.index} is not answering its readiness probe: {reason}")
    if len(down) == len(workers):
        problems += down
    return problems, down


def serve_readiness(workers: Sequence[Worker], host: str, port: int) -> ThreadingHTTPServer:
    """Serve GET /healthz/ready on host:port for all workers together; return the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            if self.path.split("?", 1)[0] != "/healthz/ready":
                status, body = 404, {"error": "not found; the readiness probe is GET /healthz/ready"}
            else:
                problems, down = readiness(workers)
                status = 503 if problems else 200
                body = {"ready": not problems, "problems": problems, "workers_down": down}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the gateway's log

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="meterway-readiness", daemon=True).start()
    logger.info("readiness of all workers: http://%s:%d/healthz/ready", host, server.server_port)
    return server


def run_workers(config: Path, count: int, worker_args: Sequence[str]) -> int:
    """Run `count` gateway processes on `config` until SIGINT or SIGTERM; return the exit status."""
    from addons.config_load import load_config
    from addons.config_monitoring import parse_stats_addr
    from addons.readiness import parse_readiness_addr

    gateway = load_config(config)
    if gateway.meterway.alerts.rules:
        print(f"error: meterway.alerts in {config} needs a single gateway process, because each worker "
              "sees only part of the requests; run without --workers, or remove the alert rules",
              file=sys.stderr)
        return 2
    section = gateway.config
    supervisor = Supervisor(config, count, worker_args)
    servers = []
    try:
        stats = parse_stats_addr(getattr(section, "stats_addr", None))
        if stats is not None:
            servers.append(serve_metrics(supervisor.workers, *stats, supervisor.stopping))
        ready = parse_readiness_addr(getattr(section, "readiness_addr", None))
        if ready is not None:
            servers.append(serve_readiness(supervisor.workers, *ready))
    except OSError as error:
        logger.warning("a monitoring endpoint did not start: %s; set config.statsAddr or "
                       "config.readinessAddr to a free HOST:PORT or to off", error)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: supervisor.stop(signal.SIGTERM))
    try:
        return supervisor.run()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
