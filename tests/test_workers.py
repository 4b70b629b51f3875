"""`meterway run --workers 2`: two gateway processes share the listener port, every request
gets its row, the metrics endpoint adds both workers up, and the supervisor drains, restarts
and rejects alert rules."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.gateway_process import BIN, REPO, free_port, one_backend_config, stop_process, wait_for_port
from tests.logdb import wait_for
from tests.promread import scrape, total
from tests.standins.openai_api import OpenAIStandIn


class Supervisor:
    """`meterway run --workers 2` in a subprocess, its output in a file."""

    def __init__(self, folder: Path, upstream: int) -> None:
        ports: set[int] = set()
        while len(ports) < 3:  # free_port() may return a port twice in a row
            ports.add(free_port())
        self.port, self.stats, self.ready = sorted(ports)
        self.config = folder / "gateway.yaml"
        self.config.write_text(one_backend_config(self.port, upstream, "sk-workers-backend-0000", self.stats, self.ready))
        self.log_path = folder / "supervisor.log"
        self.db = folder / "log.db"
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen([str(BIN / "meterway"), "run", str(self.config), "--workers", "2"],
                                            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 40.0) -> None:
        wait_for_port(self.ready, timeout, self.process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"http://127.0.0.1:{self.ready}/healthz/ready").status_code == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the workers were not ready within {timeout} s:\n{self.log()}")

    def wait_all_up(self, timeout: float = 40.0) -> None:
        """Wait until the readiness probe reaches every worker."""
        wait_for_port(self.ready, timeout, self.process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = httpx.get(f"http://127.0.0.1:{self.ready}/healthz/ready")
            if probe.status_code == 200 and not probe.json()["workers_down"]:
                return
            time.sleep(0.2)
        raise TimeoutError(f"not every worker answered within {timeout} s:\n{self.log()}")

    def worker_ports(self) -> list[int]:
        """Return each worker's private metrics port, from the supervisor's log."""
        found = dict(re.findall(r"worker (\d+) \(pid \d+\): metrics on 127\.0\.0\.1:(\d+)", self.log()))
        return [int(port) for _, port in sorted(found.items())]

    def pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\)", self.log())]


def requests_counted(url: str) -> float:
    return total(scrape(url), "meterway_requests_total")


def post(port: int) -> httpx.Response:
    # A new connection per request, so the kernel spreads them over the workers.
    with httpx.Client(timeout=10) as client:
        return client.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    server = OpenAIStandIn()
    server.require_key = "sk-workers-backend-0000"  # every worker injects the backend key
    server.start_in_thread()
    yield server
    server.stop_in_thread()


def test_workers_share_port_without_losing_rows(tmp_path: Path, upstream: OpenAIStandIn) -> None:
    supervisor = Supervisor(tmp_path, upstream.port)
    try:
        supervisor.wait_ready()
        sent = 40
        for _ in range(sent):
            assert post(supervisor.port).status_code == 200
        wait_for(supervisor.db, "select id from requests", count=sent)

        # Both workers served some of the requests, and the endpoint adds them up.
        ports = supervisor.worker_ports()
        assert len(ports) == 2
        shares = [requests_counted(f"http://127.0.0.1:{port}/metrics") for port in ports]
        assert all(share > 0 for share in shares), shares
        assert sum(shares) == sent
        assert requests_counted(f"http://127.0.0.1:{supervisor.stats}/metrics") == sent
        assert "meterway_workers_scraped 2.0" in httpx.get(f"http://127.0.0.1:{supervisor.stats}/metrics").text
    finally:
        status = stop_process(supervisor.process, signal.SIGTERM, 40)
    assert status == 0, supervisor.log()
    # Each worker's lines in the shared output name the worker.
    assert "[worker 0] reverse proxy" in supervisor.log()
    assert "[worker 1] reverse proxy" in supervisor.log()
    conn = sqlite3.connect(supervisor.db)
    assert conn.execute("select count(*) from requests").fetchone() == (sent,)
    assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
    for pid in supervisor.pids():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_workers_restart_a_killed_one(tmp_path: Path, upstream: OpenAIStandIn) -> None:
    supervisor = Supervisor(tmp_path, upstream.port)
    summed = f"http://127.0.0.1:{supervisor.stats}/metrics"
    try:
        supervisor.wait_ready()
        for _ in range(10):
            assert post(supervisor.port).status_code == 200
        wait_for(supervisor.db, "select id from requests", count=10)
        assert requests_counted(summed) == 10  # this scrape is what a restart carries over

        first = supervisor.pids()
        subprocess.run(["kill", "-KILL", str(first[0])], check=True)
        while Path(f"/proc/{first[0]}").exists() and "zombie" not in Path(f"/proc/{first[0]}/status").read_text():
            time.sleep(0.01)
        # Worker 1 still serves, so the gateway stays ready while worker 0 is down.
        probe = httpx.get(f"http://127.0.0.1:{supervisor.ready}/healthz/ready")
        assert probe.status_code == 200, probe.text
        assert probe.json()["workers_down"][0].startswith("worker 0 is not answering")
        deadline = time.monotonic() + 30
        while len(supervisor.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(supervisor.pids()) == 3, supervisor.log()
        assert "worker 0 exited with status -9" in supervisor.log()
        supervisor.wait_all_up()
        # The killed worker's log writer process names its worker too.
        assert "[worker 0] request log writer process: the gateway is gone" in supervisor.log()
        for _ in range(10):
            assert post(supervisor.port).status_code == 200
        wait_for(supervisor.db, "select id from requests", count=20)
        # The restarted worker counts from zero, but the sum keeps what it had counted.
        assert requests_counted(summed) == 20
    finally:
        assert stop_process(supervisor.process, signal.SIGTERM, 40) == 0


def test_workers_stop_during_restart(tmp_path: Path, upstream: OpenAIStandIn) -> None:
    supervisor = Supervisor(tmp_path, upstream.port)
    try:
        supervisor.wait_all_up()
        subprocess.run(["kill", "-KILL", str(supervisor.pids()[0])], check=True)
        deadline = time.monotonic() + 30
        while len(supervisor.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(supervisor.pids()) == 3, supervisor.log()
    finally:
        # The new worker 0 is still importing when the stop reaches it: a clean stop all the same.
        status = stop_process(supervisor.process, signal.SIGTERM, 40)
    assert status == 0, supervisor.log()
    assert "exit status" not in supervisor.log()


def test_workers_refuse_alert_rules(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("binds: []\nmeterway:\n  alerts:\n    rules:\n    - name: router\n"
                      "      webhook: {url: 'http://127.0.0.1:9/'}\n      routerFailOpen: {}\n")
    done = subprocess.run([sys.executable, "-m", "meterway", "run", str(config), "--workers", "2"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert "meterway.alerts" in done.stderr
    assert "without --workers" in done.stderr


class _ProbeHandler(BaseHTTPRequestHandler):
    """A worker's readiness endpoint that replies with the server's `answer` (status, JSON)."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        status, body = self.server.answer  # type: ignore[attr-defined]
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ProbeHandler)
    server.answer = (503, {"ready": False, "problems": ["semantic router channel is idle, not connected"]})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_readiness_of_starting_worker(probe_server: ThreadingHTTPServer) -> None:
    from meterway.workers import Worker, readiness

    ready_server = ThreadingHTTPServer(("127.0.0.1", 0), _ProbeHandler)
    ready_server.answer = (200, {"ready": True, "problems": []})
    threading.Thread(target=ready_server.serve_forever, daemon=True).start()
    try:
        serving = Worker(0, 0, ready_server.server_port, started_at=time.monotonic() - 60, incarnation=1)
        restarted = Worker(1, 0, probe_server.server_port, started_at=time.monotonic(), incarnation=2,
                           ready_incarnation=1)

        # Restarted and not ready yet: starting, and the other worker keeps the gateway ready.
        problems, down = readiness([serving, restarted])
        assert problems == []
        assert down == ["worker 1 is starting: semantic router channel is idle, not connected"]

        # Once it has been ready, the same reply is a problem of the whole gateway.
        probe_server.answer = (200, {"ready": True, "problems": []})
        assert readiness([serving, restarted]) == ([], [])
        probe_server.answer = (503, {"ready": False, "problems": ["request log is not writable"]})
        problems, down = readiness([serving, restarted])
        assert problems == ["worker 1: request log is not writable"]
        assert down == []

        # A worker that stays unready past the grace period is failing, not starting.
        late = Worker(2, 0, probe_server.server_port, started_at=time.monotonic() - 120, incarnation=1)
        problems, _ = readiness([serving, late])
        assert problems == ["worker 2: request log is not writable"]
    finally:
        ready_server.shutdown()
        ready_server.server_close()
