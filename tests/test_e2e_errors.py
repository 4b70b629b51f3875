"""Errors the gateway sends itself, under a real gateway process: JSON in the OpenAI format,
a message that names the value and the fix, and a row in the request log for each."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.gateway_process import GatewayProcess, free_port
from tests.logdb import wait_for, wait_row
from tests.standins.ollama_api import OllamaStandIn

CONFIG = """\
binds:
- port: {port}
  listeners:
  - routes:
    - name: local
      matches:
      - headers:
        - name: x-route
          value:
            exact: local
      backends:
      - ai:
          name: ollama
          provider:
            openAI: {{}}
          hostOverride: localhost:11434
    - name: dead
      matches:
      - headers:
        - name: x-route
          value:
            exact: dead
      backends:
      - ai:
          name: nowhere
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{dead_port}
frontendPolicies:
  http:
    maxBufferSize: 2048
config:
  database:
    url: sqlite://log.db
"""


def rows(db: Path, count: int = 1) -> list[dict]:
    return wait_for(db, "select * from requests order by started_ms", count=count)


def dead_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # make sure nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("errors")
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, dead_port=dead_port()))
    ollama = OllamaStandIn().start_in_thread()
    gateway = GatewayProcess(config, [port], upstreams={"localhost:11434": ollama.url}).start()
    yield gateway, f"http://127.0.0.1:{port}", folder / "log.db", ollama
    gateway.stop()
    ollama.stop_in_thread()


def post(base: str, body: bytes | str, route: str = "local", **headers: str) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return httpx.post(f"{base}/v1/chat/completions", content=content,
                      headers={"content-type": "application/json", "x-route": route, **headers}, timeout=10)


def row_for(db: Path, response: httpx.Response) -> dict:
    return wait_row(db, response.headers["x-meterway-request-id"])


def test_no_route_is_404_json(stack) -> None:
    _, base, db, _ = stack
    response = post(base, '{"model": "m", "messages": []}', route="elsewhere")
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert "no route" in message
    assert "fallback" in message
    assert row_for(db, response)["outcome"] == "gateway_error"


def test_model_not_string_is_400(stack) -> None:
    _, base, db, _ = stack
    response = post(base, '{"model": 42, "messages": []}')
    assert response.status_code == 400
    error = response.json()["error"]
    assert "`model` must be a string" in error["message"]
    assert "42" in error["message"]
    assert error["param"] == "model"
    assert row_for(db, response)["status"] == 400


def test_non_object_body_is_400(stack) -> None:
    _, base, _, _ = stack
    response = post(base, "[1, 2]")
    assert response.status_code == 400
    assert "not an object" in response.json()["error"]["message"]


def test_body_over_limit_is_413(stack) -> None:
    _, base, db, ollama = stack
    ollama.reset()
    big = '{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % ("x" * 4096)
    response = post(base, big)
    assert response.status_code == 413
    assert "maxBufferSize" in response.json()["error"]["message"]
    assert ollama.received == []
    assert row_for(db, response)["outcome"] == "gateway_error"


def test_upstream_unreachable_is_json_502(stack) -> None:
    _, base, db, _ = stack
    response = post(base, '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', route="dead")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("application/json")
    assert "backend" in response.json()["error"]["message"]
    unreachable = wait_for(db, "select * from requests where outcome = 'upstream_unreachable' "
                           "order by started_ms")
    assert unreachable[-1]["status"] == 502
    assert unreachable[-1]["route"] == "dead"


def test_gateway_keeps_serving_after_errors(stack) -> None:
    _, base, _, ollama = stack
    response = post(base, '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    assert response.status_code == 200
    assert "ollama" in response.json()["choices"][0]["message"]["content"]


def test_mitmdump_form_uses_config_listeners(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, dead_port=dead_port()))
    with OllamaStandIn() as ollama, GatewayProcess(config, [port], upstreams={"localhost:11434": ollama.url},
                                                   use_mitmdump=True) as gateway:
        response = post(f"http://127.0.0.1:{port}", '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
        assert response.status_code == 200, gateway.log()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", 8080)) != 0, "mitmproxy's default listener is open"
    assert "*:8080" not in gateway.log()
    assert rows(tmp_path / "log.db")[0]["backend"] == "ollama"
