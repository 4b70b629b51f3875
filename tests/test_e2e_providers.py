"""Each provider's own API through a real gateway: Anthropic natively and translated from
chat completions, Gemini's native API through google-genai, and Ollama's native /api/chat."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.gateway_process import GatewayProcess, free_port
from tests.logdb import wait_for, wait_row
from tests.standins.anthropic_api import AnthropicStandIn
from tests.standins.gemini_api import GeminiStandIn
from tests.standins.ollama_api import OllamaStandIn

ANTHROPIC_KEY = "sk-ant-canary-4e2f8a6c1d9b"
GEMINI_KEY = "AIza-canary-native-9a7c5e3b1f"

CONFIG = """\
binds:
- port: {port}
  listeners:
  - routes:
    - name: claude-native
      matches:
      - path:
          pathPrefix: /v1/messages
      policies:
        ai:
          routes:
            /v1/messages: messages
            "*": passthrough
      backends:
      - ai:
          name: anthropic
          provider:
            anthropic: {{}}
        policies:
          backendAuth:
            key: $ANTHROPIC_API_KEY
    - name: claude-chat
      matches:
      - headers:
        - name: x-provider
          value:
            exact: anthropic
      policies:
        ai:
          modelAliases:
            MoM: claude-3-7-sonnet-20250219
      backends:
      - ai:
          name: anthropic-chat
          provider:
            anthropic: {{}}
        policies:
          backendAuth:
            key: $ANTHROPIC_API_KEY
    - name: gemini-native
      matches:
      - path:
          regex: /v1(beta)?/models/.*
      backends:
      - ai:
          name: gemini
          provider:
            gemini: {{}}
        policies:
          backendAuth:
            key: $GEMINI_API_KEY
    - name: ollama-native
      matches:
      - path:
          pathPrefix: /api
      backends:
      - ai:
          name: ollama
          provider:
            openAI: {{}}
          hostOverride: localhost:11434
config:
  database:
    url: sqlite://log.db
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("providers")
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(port=port))
    claude, gemini, ollama = AnthropicStandIn(), GeminiStandIn(), OllamaStandIn()
    for standin in (claude, gemini, ollama):
        standin.start_in_thread()
    gateway = GatewayProcess(
        config, [port],
        upstreams={"api.anthropic.com:443": claude.url,
                   "generativelanguage.googleapis.com:443": gemini.url,
                   "localhost:11434": ollama.url},
        env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "GEMINI_API_KEY": GEMINI_KEY},
    ).start()
    yield {"base": f"http://127.0.0.1:{port}", "db": folder / "log.db", "claude": claude,
           "gemini": gemini, "ollama": ollama, "gateway": gateway}
    gateway.stop()
    for standin in (claude, gemini, ollama):
        standin.stop_in_thread()


def now_ms() -> int:
    return int(time.time() * 1000) - 5


def row(db: Path, request_id: str) -> dict:
    return wait_row(db, request_id)


def latest_row(db: Path, route: str, after_ms: int) -> dict:
    """Wait for the newest row of a route that started after `after_ms`."""
    return wait_for(db, "select * from requests where route = ? and started_ms >= ? "
                    "order by started_ms desc limit 1", [route, after_ms])[0]


def test_anthropic_native_messages(stack) -> None:
    stack["claude"].reset()
    client = anthropic.Anthropic(base_url=stack["base"], api_key="client-key", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-3-7-sonnet-20250219", max_tokens=100,
        messages=[{"role": "user", "content": "hello there"}],
    )
    message = raw.parse()
    received = stack["claude"].wait_for_requests(1)[0]
    assert received.path == "/v1/messages"
    assert received.header("x-api-key") == ANTHROPIC_KEY
    assert received.header("authorization") is None
    found = row(stack["db"], raw.headers["x-meterway-request-id"])
    assert found["api"] == "messages"
    assert found["provider"] == "anthropic"
    assert found["input_tokens"] == message.usage.input_tokens
    assert found["output_tokens"] == message.usage.output_tokens
    assert found["cost_status"] == "priced"


def test_anthropic_native_stream_usage(stack) -> None:
    since = now_ms()
    stack["claude"].reset()
    stack["claude"].next_usage = {"input_tokens": 4522, "cache_creation_input_tokens": 4511}
    client = anthropic.Anthropic(base_url=stack["base"], api_key="client-key", max_retries=0)
    with client.messages.stream(model="claude-3-7-sonnet-20250219", max_tokens=50,
                                messages=[{"role": "user", "content": "stream please"}]) as stream:
        final = stream.get_final_message()
    found = latest_row(stack["db"], "claude-native", since)
    assert found["stream"] == 1
    expected_input = final.usage.input_tokens + (final.usage.cache_creation_input_tokens or 0) \
        + (final.usage.cache_read_input_tokens or 0)
    assert found["input_tokens"] == expected_input
    assert found["cache_write_tokens"] == final.usage.cache_creation_input_tokens
    assert found["output_tokens"] == final.usage.output_tokens


def test_chat_translated_to_anthropic(stack) -> None:
    stack["claude"].reset()
    client = openai.OpenAI(base_url=stack["base"] + "/v1", api_key="client-key", max_retries=0,
                           default_headers={"x-provider": "anthropic"})
    raw = client.chat.completions.with_raw_response.create(
        model="MoM", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )
    completion = raw.parse()
    received = stack["claude"].wait_for_requests(1)[0]
    assert received.path == "/v1/messages"
    assert received.json["model"] == "claude-3-7-sonnet-20250219"
    assert received.json["system"] == "be brief"
    assert completion.object == "chat.completion"
    assert "anthropic" in completion.choices[0].message.content
    found = row(stack["db"], raw.headers["x-meterway-request-id"])
    assert found["routed_model"] == "claude-3-7-sonnet-20250219"
    assert found["input_tokens"] == completion.usage.prompt_tokens
    assert found["output_tokens"] == completion.usage.completion_tokens


def test_chat_stream_translated_to_anthropic(stack) -> None:
    since = now_ms()
    stack["claude"].reset()
    client = openai.OpenAI(base_url=stack["base"] + "/v1", api_key="client-key", max_retries=0,
                           default_headers={"x-provider": "anthropic"})
    chunks = list(client.chat.completions.create(
        model="MoM", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream it"}],
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "anthropic" in text
    usage = chunks[-1].usage
    assert usage is not None
    found = latest_row(stack["db"], "claude-chat", since)
    assert found["stream"] == 1
    assert found["input_tokens"] == usage.prompt_tokens
    assert found["output_tokens"] == usage.completion_tokens


def test_gemini_native_generate_content(stack) -> None:
    since = now_ms()
    stack["gemini"].reset()
    client = genai.Client(api_key="client-key", http_options=genai_types.HttpOptions(base_url=stack["base"]))
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="hello gemini")
    received = stack["gemini"].wait_for_requests(1)[0]
    assert ":generateContent" in received.path
    assert received.header("x-goog-api-key") == GEMINI_KEY
    found = latest_row(stack["db"], "gemini-native", since)
    assert found["api"] == "generate_content"
    assert found["requested_model"] == "gemini-2.5-flash"
    assert found["input_tokens"] == reply.usage_metadata.prompt_token_count
    assert found["cost_status"] == "priced"


def test_gemini_native_stream_keeps_last_usage(stack) -> None:
    since = now_ms()
    stack["gemini"].reset()
    client = genai.Client(api_key="client-key", http_options=genai_types.HttpOptions(base_url=stack["base"]))
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="stream gemini"))
    last = chunks[-1].usage_metadata
    found = latest_row(stack["db"], "gemini-native", since)
    assert found["stream"] == 1
    assert found["input_tokens"] == last.prompt_token_count
    expected_output = (last.candidates_token_count or 0) + (last.thoughts_token_count or 0)
    assert found["output_tokens"] == expected_output


def test_ollama_native_chat_stream(stack) -> None:
    since = now_ms()
    stack["ollama"].reset()
    with httpx.stream("POST", stack["base"] + "/api/chat", json={
        "model": "qwen2.5-coder:7b", "messages": [{"role": "user", "content": "hi ollama"}],
    }, timeout=10) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    final = lines[-1]
    assert final["done"] is True
    found = latest_row(stack["db"], "ollama-native", since)
    assert found["input_tokens"] == final["prompt_eval_count"]
    assert found["output_tokens"] == final["eval_count"]
    assert found["cost_status"] == "local"
