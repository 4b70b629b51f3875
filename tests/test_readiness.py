"""`GET /healthz/ready` of a real gateway process, with and without its semantic router."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from addons.readiness import parse_readiness_addr
from tests.gateway_process import GatewayProcess, free_port, wait_for_port
from tests.routerthread import ThreadedRouter

CONFIG = """\
policies:
- name: {{name: router, namespace: default}}
  target: {{gateway: {{gatewayName: default, gatewayNamespace: default}}}}
  phase: gateway
  policy:
    extProc:
      host: 127.0.0.1:{router_port}
      failureMode: failOpen
binds:
- port: {port}
  listeners:
  - routes:
    - backends:
      - ai: {{name: local, provider: {{openAI: {{}}}}, hostOverride: "127.0.0.1:1"}}
config:
  readinessAddr: 127.0.0.1:{ready_port}
  database:
    url: sqlite://log.db
"""


def probe(port: int, path: str = "/healthz/ready") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def test_router_down_then_up(tmp_path: Path) -> None:
    port, ready_port, router_port = free_port(), free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, ready_port=ready_port, router_port=router_port))
    with GatewayProcess(config, [port]):
        wait_for_port(ready_port)  # the probe starts after the listeners
        reply = probe(ready_port)
        assert reply.status_code == 503
        problems = reply.json()["problems"]
        assert len(problems) == 1
        assert "semantic router channel" in problems[0]

        router = ThreadedRouter(port=router_port).start()
        try:
            deadline = time.monotonic() + 15
            while probe(ready_port).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            reply = probe(ready_port)
            assert reply.status_code == 200
            assert reply.json() == {"ready": True, "problems": []}
        finally:
            router.stop()
        assert probe(ready_port, "/other").status_code == 404


@pytest.mark.parametrize(("value", "expected"), [
    (None, ("127.0.0.1", 15021)),
    (":15021", ("127.0.0.1", 15021)),
    ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ("[::1]:9000", ("::1", 9000)),
    ("off", None),
    (False, None),
])
def test_parse_readiness_addr(value: object, expected: object) -> None:
    assert parse_readiness_addr(value) == expected


def test_parse_readiness_addr_rejects_unix() -> None:
    with pytest.raises(ValueError, match="unix sockets"):
        parse_readiness_addr("unix:/run/ready.sock")
