"""The processes a benchmark run starts: the upstream, the router, and each target under test.

Every process binds 127.0.0.1 on a free port, logs to a file in the run's folder and is
stopped with SIGINT (then SIGKILL after a grace period) by `Processes.close()`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import CLIENT_KEY
from bench.litellm_env import litellm_command

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONFIGS = Path(__file__).resolve().parent / "configs"
# The key meterway injects upstream; it is made up and only ever reaches the local upstream.
BENCH_OPENAI_KEY = "sk-bench-upstream-0000"

# name -> what it is, for the report.
TARGETS = {
    "direct": "the client talks to the upstream itself",
    "meterway": "`meterway run` with the ext_proc router (failOpen) and the SQLite log",
    "meterway-norouter": "`meterway run` without the ext_proc policy, SQLite log on",
    "meterway-2w": "`meterway run --workers 2`: two gateway processes on one port, router and log on",
    "mitmdump": "`mitmdump -q --mode reverse:...` with no script",
    "mitmdump-stream": "plain mitmdump with `--set stream_large_bodies=1` (stream cases only)",
    "mitmdump-router": "mitmdump with `bench/router_floor.py`, which only asks the ext_proc router: "
                       "the floor for any mitmproxy gateway that does",
    "litellm": "LiteLLM proxy, one worker, no database, offline cost map",
    "litellm-2w": "LiteLLM proxy with `--num_workers 2`, to compare with `meterway-2w`",
}

# The targets that ask the ext_proc router, so a run that measures any of them starts it.
ROUTER_TARGETS = frozenset({"meterway", "meterway-2w", "mitmdump-router"})


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float, log: Path) -> None:
    """Wait until 127.0.0.1:port accepts connections; raise with the log if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with status {process.returncode}; its log:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{log.stem} did not listen on 127.0.0.1:{port} within {timeout} s; its log:\n{tail(log)}")


def tail(log: Path, size: int = 3000) -> str:
    """Return the end of a log file."""
    return log.read_text(errors="replace")[-size:] if log.exists() else "(no log)"


@dataclass
class Target:
    name: str
    url: str
    pid: int | None  # the proxy's process id; None for direct calls
    streams_only: bool = False
    folder: Path | None = None  # the run folder with the target's config and database
    log: Path | None = None  # the process's output
    workers: int = 1
    is_meterway: bool = False


@dataclass
class Processes:
    """Starts processes and stops every one of them on close()."""

    folder: Path
    running: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, command: list[str], port: int, *, env: dict[str, str] | None = None,
              cwd: Path | None = None, timeout: float = 30.0, unset: tuple[str, ...] = ()) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        environ = {key: value for key, value in os.environ.items() if key not in unset}
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd or REPO,
                                       env={**environ, **(env or {})})
        self.running.append((name, process))
        wait_for_port(port, process, timeout, log)
        logger.info("%s listening on 127.0.0.1:%d (pid %d)", name, port, process.pid)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 15.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running = [(n, p) for n, p in self.running if p is not process]

    def close(self) -> None:
        for _, process in reversed(list(self.running)):
            self.stop(process)


def start_upstream(procs: Processes, chunks: int, pace_ms: float, bulk_mb: int) -> str:
    """Start the local upstream and return its base URL."""
    port = free_port()
    procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port), "--chunks", str(chunks),
                             "--pace-ms", str(pace_ms), "--bulk-mb", str(bulk_mb)], port)
    return f"http://127.0.0.1:{port}"


def start_router(procs: Processes) -> str:
    """Start the stand-in ext_proc router and return its host:port."""
    port = free_port()
    procs.start("router", [sys.executable, "-m", "tests.standins.extproc_server", "--port", str(port),
                           "--mode", "keywords"], port)
    return f"127.0.0.1:{port}"


def start_meterway(procs: Processes, name: str, upstream: str, router: str | None,
                   profile_to: Path | None = None, workers: int = 1, source: Path | None = None) -> Target:
    """Start `meterway run` on a copy of a bench config in its own folder.

    `source` is another checkout of meterway (a git worktree) to run instead of the installed one.
    """
    folder = procs.folder / name
    folder.mkdir(parents=True, exist_ok=True)
    template = CONFIGS / ("meterway-router.yaml" if router else "meterway-norouter.yaml")
    config = folder / template.name
    shutil.copyfile(template, config)
    port = free_port()
    env = {"BENCH_GATEWAY_PORT": str(port), "BENCH_ROUTER_TARGET": router or "", "OPENAI_API_KEY": BENCH_OPENAI_KEY}
    mapping = f"api.openai.com:443={upstream}"
    if source is not None:
        command = [sys.executable, "-m", "meterway", "run", str(config), "--upstream", mapping]
        env["PYTHONPATH"] = str(source)
    elif profile_to is None:
        command = [str(BIN / "meterway"), "run", str(config), "--upstream", mapping]
        if workers > 1:
            command += ["--workers", str(workers)]
    else:
        command = [sys.executable, "-m", "bench.profiled", str(profile_to), "run", str(config), "--upstream", mapping]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    process = procs.start(name, command, port, env=env, cwd=folder)
    return Target(name, f"http://127.0.0.1:{port}", process.pid, folder=folder, log=procs.folder / f"{name}.log",
                  workers=workers, is_meterway=True)


def start_mitmdump(procs: Processes, name: str, upstream: str, stream: bool, router: str | None = None) -> Target:
    """Start mitmdump in reverse mode towards the upstream: with no script, or with the router floor script."""
    port = free_port()
    command = [str(BIN / "mitmdump"), "-q", "--mode", f"reverse:{upstream}@127.0.0.1:{port}"]
    if stream:
        command += ["--set", "stream_large_bodies=1"]
    env = None
    if router is not None:
        command += ["-s", str(REPO / "bench" / "router_floor.py")]
        env = {"BENCH_ROUTER_TARGET": router}
    process = procs.start(name, command, port, env=env)
    return Target(name, f"http://127.0.0.1:{port}", process.pid, streams_only=stream, log=procs.folder / f"{name}.log")


def litellm_config(upstream: str) -> str:
    """Build a LiteLLM proxy config that sends the benchmark's models to the local upstream."""
    lines = ["model_list:"]
    for model in ("gpt-4o-mini", "gpt-4o-mini-paced", "bench-bulk"):
        lines += [f"  - model_name: {model}", "    litellm_params:", f"      model: openai/{model}",
                  f"      api_base: {upstream}/v1", f"      api_key: {BENCH_OPENAI_KEY}"]
    lines += ["general_settings:", f"  master_key: {CLIENT_KEY}",
              "litellm_settings:", "  telemetry: false", "  drop_params: true"]
    return "\n".join(lines) + "\n"


def start_litellm(procs: Processes, upstream: str, workers: int = 1) -> Target:
    """Start the LiteLLM proxy (installing it on first use); raise RuntimeError if unavailable."""
    command = litellm_command()
    name = "litellm" if workers == 1 else f"litellm-{workers}w"
    folder = procs.folder / name
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "litellm.yaml"
    config.write_text(litellm_config(upstream))
    port = free_port()
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "OPENAI_API_KEY": BENCH_OPENAI_KEY}
    # Without DATABASE_URL the proxy runs with no database, as the comparison requires.
    arguments = ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        arguments += ["--num_workers", str(workers)]
    process = procs.start(name, [*command, *arguments], port, env=env, cwd=folder, timeout=180.0,
                          unset=("DATABASE_URL",))
    return Target(name, f"http://127.0.0.1:{port}", process.pid, folder=folder)
