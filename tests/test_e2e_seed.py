"""The seed homelab config, unchanged, under a real gateway process with real SDK clients.

Providers are local stand-ins: OpenAI over HTTPS with a test CA, Gemini's OpenAI-compatible
endpoint and Ollama over HTTP. The upstream mapping option sends each provider host there.
The stand-in semantic router listens where the seed config expects it, 127.0.0.1:50051.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.gateway_process import REPO, GatewayProcess, copy_config
from tests.logdb import wait_for, wait_row
from tests.routerthread import ThreadedRouter
from tests.standins.gemini_api import GeminiStandIn
from tests.standins.ollama_api import OllamaStandIn
from tests.standins.openai_api import OpenAIStandIn
from tests.standins.tls import shared_ca

OPENAI_KEY = "sk-canary-openai-7f3a9c1e5b2d4f60"
GEMINI_KEY = "AIza-canary-gemini-2b8e6d4a0c9f1e37"
CLIENT_KEY = "sk-client-canary-5d1c9e7b3a"


@dataclass
class SeedStack:
    folder: Path
    gateway: GatewayProcess
    router: ThreadedRouter
    openai: OpenAIStandIn
    gemini: GeminiStandIn
    ollama: OllamaStandIn

    @property
    def db(self) -> Path:
        return self.folder / "agentgateway.db"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url="http://127.0.0.1:3000/v1", api_key=CLIENT_KEY, max_retries=0)

    def reset(self) -> None:
        for standin in (self.openai, self.gemini, self.ollama):
            standin.reset()

    def row(self, request_id: str) -> dict:
        """Wait for the writer thread to store the row, then return it."""
        try:
            return wait_row(self.db, request_id)
        except AssertionError as error:
            raise AssertionError(f"{error}; gateway log:\n{self.gateway.log()}") from None


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("seed")
    config = copy_config(REPO / "configs" / "homelab.yaml", folder, REPO / "configs" / "base-costs.json")
    openai_standin = OpenAIStandIn(tls=True)
    gemini_standin = GeminiStandIn()
    ollama_standin = OllamaStandIn()
    for standin in (openai_standin, gemini_standin, ollama_standin):
        standin.start_in_thread()
    router = ThreadedRouter("keywords", port=50051).start()
    gateway = GatewayProcess(
        config, [3000, 4000],
        upstreams={
            "api.openai.com:443": openai_standin.url,
            "generativelanguage.googleapis.com:443": gemini_standin.url,
            "localhost:11434": ollama_standin.url,
        },
        env={"OPENAI_API_KEY": OPENAI_KEY, "GEMINI_API_KEY": GEMINI_KEY},
        trusted_ca=shared_ca().ca_pem_path,
    )
    gateway.start()
    stack = SeedStack(folder, gateway, router, openai_standin, gemini_standin, ollama_standin)
    yield stack
    gateway.stop()
    router.close()
    for standin in (openai_standin, gemini_standin, ollama_standin):
        standin.stop_in_thread()


def ask(client: openai.OpenAI, prompt: str, **kwargs):
    raw = client.chat.completions.with_raw_response.create(
        model="MoM", messages=[{"role": "user", "content": prompt}], **kwargs
    )
    return raw.headers.get("x-meterway-request-id"), raw.parse()


def test_code_prompt_goes_to_ollama(seed: SeedStack) -> None:
    seed.reset()
    request_id, completion = ask(seed.client(), "write a python function that adds two numbers")
    received = seed.ollama.wait_for_requests(1)[0]
    assert received.path == "/v1/chat/completions"
    assert received.json["model"] == "qwen2.5-coder:7b"
    assert received.header("authorization") is None
    assert seed.openai.received == []
    assert seed.gemini.received == []
    assert "ollama" in completion.choices[0].message.content

    row = seed.row(request_id)
    assert row["backend"] == "ollama"
    assert row["provider"] == "openai"
    assert row["requested_model"] == "MoM"
    assert row["routed_model"] == "qwen2.5-coder:7b"
    assert row["router_outcome"] == "ok"
    assert json.loads(row["router_headers"]) == {"x-selected-model": "qwen-coder"}
    assert row["status"] == 200
    assert row["outcome"] == "ok"
    assert row["input_tokens"] == completion.usage.prompt_tokens
    assert row["output_tokens"] == completion.usage.completion_tokens
    assert row["cost_usd"] == 0
    assert row["cost_status"] == "local"

    conn = sqlite3.connect(seed.db)
    stored = json.loads(conn.execute("select client_request from payloads where request_id = ?",
                                     [request_id]).fetchone()[0])
    conn.close()
    assert stored["url"] == "http://127.0.0.1:3000/v1/chat/completions"
    assert ["Host", "127.0.0.1:3000"] in stored["headers"] or ["host", "127.0.0.1:3000"] in stored["headers"]
    assert json.loads(stored["body"])["model"] == "MoM"

    # The prompt and the answer are searchable.
    found = wait_for(seed.db, "select r.id from requests_fts f join requests r on r.rowid = f.rowid "
                     "where requests_fts match 'numbers AND stand'")
    assert request_id in [hit["id"] for hit in found]


def test_analysis_prompt_goes_to_openai_over_tls(seed: SeedStack) -> None:
    seed.reset()
    request_id, completion = ask(seed.client(), "give me a careful analysis of this plan")
    received = seed.openai.wait_for_requests(1)[0]
    assert received.json["model"] == "gpt-4o"
    assert received.header("authorization") == f"Bearer {OPENAI_KEY}"
    assert CLIENT_KEY not in json.dumps(received.headers)

    row = seed.row(request_id)
    assert row["route"] and row["backend"] == "openai"
    assert row["routed_model"] == "gpt-4o"
    assert row["upstream"] == seed.openai.hostport
    assert row["input_tokens"] == completion.usage.prompt_tokens
    assert row["cost_status"] == "priced"
    assert row["cost_usd"] > 0


def test_translate_prompt_goes_to_gemini(seed: SeedStack) -> None:
    seed.reset()
    request_id, completion = ask(seed.client(), "translate 'good morning' to French")
    received = seed.gemini.wait_for_requests(1)[0]
    assert received.path == "/v1beta/openai/chat/completions"
    assert received.json["model"] == "gemini-2.5-flash"
    assert received.header("authorization") == f"Bearer {GEMINI_KEY}"

    row = seed.row(request_id)
    assert row["backend"] == "gemini"
    assert row["provider"] == "gcp.gemini"
    assert row["routed_model"] == "gemini-2.5-flash"
    assert row["cost_status"] == "priced"


def test_streaming_usage_added_and_removed(seed: SeedStack) -> None:
    seed.reset()
    client = seed.client()
    with client.chat.completions.with_streaming_response.create(
        model="MoM", stream=True, messages=[{"role": "user", "content": "analysis of a stream"}],
    ) as raw:
        request_id = raw.headers.get("x-meterway-request-id")
        chunks = list(raw.parse())
    received = seed.openai.wait_for_requests(1)[0]
    assert received.json["stream_options"] == {"include_usage": True}
    assert chunks, "the stream carried no chunks"
    assert all(chunk.choices for chunk in chunks), "the usage-only chunk reached the client"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert "openai" in text

    row = seed.row(request_id)
    assert row["stream"] == 1
    assert row["usage_source"] == "provider"
    assert row["output_tokens"] and row["output_tokens"] > 0
    assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["duration_ms"]


def test_streaming_client_asked_for_usage(seed: SeedStack) -> None:
    seed.reset()
    stream = seed.client().chat.completions.create(
        model="MoM", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "python code please"}],
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].choices == []


def test_router_down_fails_open_to_fallback(seed: SeedStack) -> None:
    seed.reset()
    seed.router.stop()
    try:
        request_id, completion = ask(seed.client(), "write a python function")
    finally:
        seed.router.start()
    received = seed.gemini.wait_for_requests(1)[0]
    assert received.json["model"] == "gemini-2.5-flash"
    row = seed.row(request_id)
    assert row["backend"] == "gemini-default"
    assert row["router_outcome"] == "failed_open"
    assert "127.0.0.1:50051" in row["router_error"]
    assert row["outcome"] == "ok"


def test_models_list_answered_by_gateway(seed: SeedStack) -> None:
    seed.reset()
    models = {model.id for model in seed.client().models.list()}
    assert {"MoM", "inteli-llm", "qwen2.5-coder:7b", "gpt-4o", "gemini-2.5-flash"} <= models
    assert seed.openai.received == []
    assert seed.gemini.received == []
    assert seed.ollama.received == []


def test_bad_json_gets_openai_error(seed: SeedStack) -> None:
    import httpx

    response = httpx.post("http://127.0.0.1:3000/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "not valid JSON" in error["message"]
    request_id = response.headers["x-meterway-request-id"]
    assert seed.row(request_id)["outcome"] == "gateway_error"


def test_vllm_mode_rewrites_the_model(seed: SeedStack) -> None:
    seed.reset()
    seed.router.stop()
    vllm = ThreadedRouter("vllm", port=50051).start()
    try:
        request_id, _ = ask(seed.client(), "python code for a parser")
        gpt_id, _ = ask(seed.client(), "an analysis please", stream=False)
    finally:
        vllm.close()
        seed.router.start()
    # The router rewrote `MoM` itself, so the seed's aliases (keyed on MoM) no longer apply.
    ollama_request = seed.ollama.wait_for_requests(1)[0]
    assert ollama_request.json["model"] == "qwen-coder"
    row = seed.row(request_id)
    assert row["requested_model"] == "MoM"
    assert row["router_model"] == "qwen-coder"
    assert row["routed_model"] == "qwen-coder"
    assert seed.openai.wait_for_requests(1)[0].json["model"] == "gpt-4o"
    assert seed.row(gpt_id)["router_model"] == "gpt-4o"


def _without_usage_event(stream: bytes) -> bytes:
    """Drop the usage-only event (`"choices": []`) from an OpenAI SSE byte stream."""
    kept = []
    for block in stream.split(b"\n\n"):
        data = block[len(b"data: "):] if block.startswith(b"data: ") else b""
        if data.startswith(b"{"):
            event = json.loads(data)
            if event.get("choices") == [] and event.get("usage"):
                continue
        kept.append(block)
    return b"\n\n".join(kept)


def test_answers_pass_byte_for_byte(seed: SeedStack) -> None:
    import httpx

    body = {"model": "MoM", "messages": [{"role": "user", "content": "python code"}]}
    seed.reset()
    plain = httpx.post("http://127.0.0.1:3000/v1/chat/completions", json=body, timeout=10)
    assert plain.content == seed.ollama.sent[0]

    for options, changed in ((None, True), ({"include_usage": True}, False)):
        seed.reset()
        streamed = {**body, "stream": True, **({"stream_options": options} if options else {})}
        with httpx.stream("POST", "http://127.0.0.1:3000/v1/chat/completions", json=streamed,
                          timeout=10) as response:
            received = b"".join(response.iter_raw())
        sent = seed.ollama.sent[0]
        # The gateway removes only the usage event it asked for itself.
        assert received == (_without_usage_event(sent) if changed else sent)
        assert (b'"choices": []' in received) != changed


def test_no_key_in_any_written_file(seed: SeedStack) -> None:
    """Run last: search everything the gateway wrote for the canary keys."""
    seed.gateway.stop()
    written = [seed.gateway.log_path, *seed.folder.glob("agentgateway.db*")]
    assert any(path.suffix == ".db" for path in written)
    for path in written:
        data = path.read_bytes()
        for key in (OPENAI_KEY, GEMINI_KEY, CLIENT_KEY):
            assert key.encode() not in data, f"{key[:12]}... found in {path.name}"
    conn = sqlite3.connect(seed.db)
    flows = conn.execute("select count(*) from payloads where flow is not null").fetchone()[0]
    conn.close()
    assert flows > 0
