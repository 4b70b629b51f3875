"""Client keys (agentgateway's `apiKey` policy) on a listener, a route, `llm:` and the gateway."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest
from mitmproxy.test import tflow

from addons import record as flowrecord
from addons.auth import Auth
from addons.config import Config, Listener
from addons.config_load import load_config
from addons.router import Router
from tests.gateway_process import GatewayProcess, free_port
from tests.standins.ollama_api import OllamaStandIn

LISTENER_KEY = "listener-key-1"
ROUTE_KEY = "route-key-2"

CONFIG = """\
binds:
- port: {listener_port}
  listeners:
  - policies:
      apiKey:
        mode: strict
        keys:
        - key: {listener_key}
          metadata: {{name: alice}}
    routes:
    - backends:
      - ai: {{name: local, provider: {{openAI: {{}}}}, hostOverride: "127.0.0.1:{backend}"}}
- port: {route_port}
  listeners:
  - routes:
    - name: guarded
      matches:
      - path: {{pathPrefix: /v1/chat}}
      policies:
        apiKey:
          mode: strict
          keys:
          - keyHash: "sha256:{route_hash}"
            metadata: {{name: bob}}
      backends:
      - ai: {{name: local, provider: {{openAI: {{}}}}, hostOverride: "127.0.0.1:{backend}"}}
    - name: open
      backends:
      - ai: {{name: local, provider: {{openAI: {{}}}}, hostOverride: "127.0.0.1:{backend}"}}
config:
  database:
    url: sqlite://log.db
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("client-auth")
    backend = OllamaStandIn().start_in_thread()
    listener_port, route_port = free_port(), free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(
        listener_port=listener_port, route_port=route_port, backend=backend.port,
        listener_key=LISTENER_KEY, route_hash=hashlib.sha256(ROUTE_KEY.encode()).hexdigest(),
    ))
    gateway = GatewayProcess(config, [listener_port, route_port]).start()
    yield listener_port, route_port, folder / "log.db", backend
    gateway.stop()
    backend.stop_in_thread()


def client_of(db: Path, request_id: str) -> tuple[str | None, int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if db.exists():
            conn = sqlite3.connect(db)
            try:
                row = conn.execute("select client, status from requests where id = ?", (request_id,)).fetchone()
            except sqlite3.OperationalError:
                row = None
            conn.close()
            if row is not None:
                return row
        time.sleep(0.05)
    raise AssertionError(f"no row {request_id}")


def test_listener_key_names_client(stack) -> None:
    listener_port, _, db, backend = stack
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{listener_port}/v1", api_key=LISTENER_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=CHAT["messages"])
    assert client_of(db, raw.headers["x-meterway-request-id"]) == ("alice", 200)
    # The client's key never reaches the provider.
    assert all(LISTENER_KEY not in str(request.headers) for request in backend.received)


def test_listener_wrong_key_is_401_openai(stack) -> None:
    listener_port, _, db, _ = stack
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{listener_port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="m", messages=CHAT["messages"])
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    request_id = caught.value.response.headers["x-meterway-request-id"]
    assert client_of(db, request_id) == (None, 401)


def test_missing_key_on_messages_is_anthropic_401(stack) -> None:
    listener_port, _, _, _ = stack
    reply = httpx.post(f"http://127.0.0.1:{listener_port}/v1/messages",
                       json={"model": "claude", "max_tokens": 5, "messages": []}, timeout=10)
    assert reply.status_code == 401
    body = reply.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert "missing API key" in body["error"]["message"]


def test_route_key_checked_after_selection(stack) -> None:
    _, route_port, db, _ = stack
    base = f"http://127.0.0.1:{route_port}"
    assert httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=10).status_code == 401
    wrong = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers={"x-api-key": LISTENER_KEY}, timeout=10)
    assert wrong.status_code == 401
    good = httpx.post(f"{base}/v1/chat/completions", json=CHAT,
                      headers={"authorization": f"Bearer {ROUTE_KEY}"}, timeout=10)
    assert good.status_code == 200
    assert client_of(db, good.headers["x-meterway-request-id"]) == ("bob", 200)
    # The route `open` has no apiKey policy.
    assert httpx.post(f"{base}/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10).status_code == 200


GATEWAY_AND_LLM = """\
policies:
- name:
    name: clients
    namespace: default
  target:
    gateway:
      gatewayName: default
      gatewayNamespace: default
  phase: gateway
  policy:
    apiKey:
      mode: optional
      keys:
      - key: gateway-key
        metadata: {name: carol}
binds:
- port: 3000
  listeners:
  - routes:
    - backends:
      - ai: {name: local, provider: {openAI: {}}, hostOverride: "127.0.0.1:1"}
llm:
  port: 4000
  policies:
    apiKey:
      mode: strict
      keys:
      - key: llm-key
        metadata: {name: dave}
  models:
  - name: "*"
    provider: openai
"""


@pytest.fixture
def auth(tmp_path: Path) -> tuple[Auth, Config]:
    path = tmp_path / "gateway.yaml"
    path.write_text(GATEWAY_AND_LLM)
    config = Config()
    config.gateway = load_config(path)
    config.listeners = {3000: Listener(3000, "bind", config.gateway.binds[0]), 4000: Listener(4000, "llm", None)}
    return Auth(config, Router(config)), config


def check(auth: Auth, port: int, headers: dict[str, str]) -> tuple[int | None, str | None]:
    flow = tflow.tflow()
    for name, value in headers.items():
        flow.request.headers[name] = value
    rec = flowrecord.start(flow, port)
    auth.requestheaders(flow)
    return (flow.response.status_code if flow.response else None), rec.get("client")


def test_gateway_policy_optional_mode(auth) -> None:
    addon, _ = auth
    assert check(addon, 3000, {"authorization": "Bearer gateway-key"}) == (None, "carol")
    assert check(addon, 3000, {}) == (None, None)
    assert check(addon, 3000, {"authorization": "Bearer nope"}) == (401, None)


def test_llm_policy_adds_to_gateway(auth) -> None:
    addon, _ = auth
    assert check(addon, 4000, {"x-api-key": "llm-key"}) == (None, "dave")
    assert check(addon, 4000, {"x-api-key": "gateway-key"}) == (None, "carol")
    assert check(addon, 4000, {}) == (401, None)


def test_credentials_redacted_on_flow(auth) -> None:
    addon, _ = auth
    flow = tflow.tflow()
    flow.request.headers["authorization"] = "Bearer llm-key"
    flowrecord.start(flow, 4000)
    addon.requestheaders(flow)
    assert flow.request.headers["authorization"] == "[redacted]"
