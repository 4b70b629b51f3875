"""Run the real gateway as a subprocess (`meterway run` or `mitmdump -s`) for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the gateway exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(process: subprocess.Popen | None, signum: int, timeout: float) -> int | None:
    """Send `signum`, wait up to `timeout` seconds, then kill; return the exit status."""
    if process is None or process.poll() is not None:
        return process.returncode if process else None
    process.send_signal(signum)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def one_backend_config(port: int, upstream: int, key: str, stats: int, ready: int) -> str:
    """Build a gateway config with one listener whose one route sends everything to a local
    OpenAI stand-in with a backend key, logging to `log.db` beside the config."""
    return f"""\
binds:
- port: {port}
  listeners:
  - routes:
    - backends:
      - ai:
          name: local
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{upstream}
        policies:
          backendAuth:
            key: {key}
config:
  database:
    url: sqlite://log.db
  statsAddr: 127.0.0.1:{stats}
  readinessAddr: 127.0.0.1:{ready}
"""


def copy_config(source: Path, folder: Path, *extra: Path) -> Path:
    """Copy a config file byte for byte (plus files it refers to) into a test folder."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    shutil.copyfile(source, target)
    for path in extra:
        shutil.copyfile(path, folder / path.name)
    return target


class GatewayProcess:
    """A gateway subprocess with its log in a file; use as a context manager."""

    def __init__(self, config: Path, ports: list[int], *, upstreams: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, trusted_ca: Path | None = None,
                 use_mitmdump: bool = False) -> None:
        self.config = config
        self.ports = ports
        self.upstreams = upstreams or {}
        self.env = env or {}
        self.trusted_ca = trusted_ca
        self.use_mitmdump = use_mitmdump
        self.log_path = config.parent / "gateway.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        mapping = [f"{source}={target}" for source, target in self.upstreams.items()]
        if self.use_mitmdump:
            command = [str(BIN / "mitmdump"), "-s", str(REPO / "addons" / "gateway.py"),
                       "--set", f"meterway_config={self.config}"]
            # As the README shows: naming the listeners up front keeps mitmproxy from
            # opening its default *:8080 while the script is still loading.
            for port in self.ports:
                command += ["--mode", f"reverse:http://127.0.0.1:9@127.0.0.1:{port}"]
            for entry in mapping:
                command += ["--set", f"meterway_upstream={entry}"]
            if self.trusted_ca:
                command += ["--set", f"ssl_verify_upstream_trusted_ca={self.trusted_ca}"]
            return command
        command = [str(BIN / "meterway"), "run", str(self.config)]
        for entry in mapping:
            command += ["--upstream", entry]
        if self.trusted_ca:
            command += ["--trusted-ca", str(self.trusted_ca)]
        return command

    def start(self) -> GatewayProcess:
        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.config.parent)
        log.close()
        try:
            for port in self.ports:
                wait_for_port(port, process=self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"gateway did not start; its log:\n{self.log()}") from None
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop with SIGINT, as Ctrl-C does, and return the exit status."""
        return stop_process(self.process, signal.SIGINT, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
