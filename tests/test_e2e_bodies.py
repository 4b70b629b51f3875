"""Odd response bodies through a real gateway: mislabelled gzip, bytes that are not UTF-8 and
a body over the stored-size cap. Each is passed to the client as the upstream sent it, and
its row and payload are written with flags that say what was odd."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import bpe_openai
import httpx
import pytest
from aiohttp import web

from tests.gateway_process import GatewayProcess, free_port
from tests.logdb import wait_for, wait_row

CONFIG = """\
binds:
- port: {port}
  listeners:
  - routes:
    - name: odd
      backends:
      - ai:
          name: odd-upstream
          provider:
            openAI: {{}}
          hostOverride: 127.0.0.1:{upstream_port}
config:
  database:
    url: sqlite://log.db
  statsAddr: "off"
  readinessAddr: "off"
meterway:
  payloads:
    maxBytes: 65536
"""

CHAT = {"id": "c1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
NO_USAGE = json.dumps({key: value for key, value in CHAT.items() if key != "usage"}).encode()
BAD_GZIP = json.dumps(CHAT).encode()  # labelled gzip below, but plain JSON
NOT_UTF8 = json.dumps({**CHAT, "model": "m-\udcff"}, ensure_ascii=False).encode("utf-8", "surrogateescape")
BIG_EMBEDDING = json.dumps({
    "object": "list", "model": "e",
    "data": [{"object": "embedding", "index": i, "embedding": [0.123456789] * 1536} for i in range(16)],
    "usage": {"prompt_tokens": 16, "total_tokens": 16},
}).encode()


class OddUpstream:
    """An aiohttp server on 127.0.0.1 that answers each path with one odd body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.ready = threading.Event()

    async def chat(self, request: web.Request) -> web.Response:
        kind = request.headers.get("x-odd")
        if kind == "no-usage":
            return web.Response(body=NO_USAGE, headers={"content-type": "application/json"})
        if kind == "bad-gzip":
            return web.Response(body=BAD_GZIP, headers={"content-type": "application/json",
                                                        "content-encoding": "gzip"})
        return web.Response(body=NOT_UTF8, headers={"content-type": "application/json"})

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.Response(body=BIG_EMBEDDING, headers={"content-type": "application/json"})

    def run(self) -> None:
        import asyncio

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        self.loop = asyncio.new_event_loop()
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    folder: Path = tmp_path_factory.mktemp("bodies")
    upstream = OddUpstream()
    threading.Thread(target=upstream.run, daemon=True).start()
    upstream.ready.wait(10)
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, upstream_port=upstream.port))
    with GatewayProcess(config, [port]) as gateway:
        yield f"http://127.0.0.1:{port}", folder / "log.db", gateway
    upstream.loop.call_soon_threadsafe(upstream.loop.stop)


def payload(db: Path, request_id: str) -> dict:
    return wait_for(db, "select * from payloads where request_id = ?", [request_id])[0]


def test_mislabelled_gzip_passes_and_is_flagged(stack) -> None:
    base, db, _ = stack
    with httpx.stream("POST", f"{base}/v1/chat/completions", headers={"x-odd": "bad-gzip"},
                      json={"model": "m", "messages": []}) as response:
        raw = b"".join(response.iter_raw())  # undecoded: the label is wrong on purpose
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert raw == BAD_GZIP
    request_id = response.headers["x-meterway-request-id"]
    assert wait_row(db, request_id)["outcome"] == "ok"
    assert "bad_gzip" in json.loads(payload(db, request_id)["body_flags"])


def test_not_utf8_passes_and_is_flagged(stack) -> None:
    base, db, _ = stack
    response = httpx.post(f"{base}/v1/chat/completions", headers={"x-odd": "latin"},
                          json={"model": "m", "messages": []})
    assert response.status_code == 200
    assert response.content == NOT_UTF8
    request_id = response.headers["x-meterway-request-id"]
    assert wait_row(db, request_id)["status"] == 200
    assert "not_utf8" in json.loads(payload(db, request_id)["body_flags"])


def test_large_body_is_capped_in_the_log(stack) -> None:
    base, db, _ = stack
    response = httpx.post(f"{base}/v1/embeddings", json={"model": "e", "input": ["x"] * 16})
    assert response.status_code == 200
    assert response.content == BIG_EMBEDDING
    assert len(BIG_EMBEDDING) > 200_000
    request_id = response.headers["x-meterway-request-id"]
    row = wait_row(db, request_id)
    assert row["api"] == "embeddings"
    assert row["input_tokens"] == 16
    stored = payload(db, request_id)
    assert stored["response_bytes"] == len(BIG_EMBEDDING)
    assert stored["truncated"] == 1
    assert len(json.loads(stored["response"])["body"].encode()) <= 65536


def test_estimate_loads_one_encoding_on_first_need(stack) -> None:
    base, db, gateway = stack
    prompt = "Count these words for me please"
    response = httpx.post(f"{base}/v1/chat/completions", headers={"x-odd": "no-usage"},
                          json={"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]})
    assert response.status_code == 200
    assert response.content == NO_USAGE
    row = wait_row(db, response.headers["x-meterway-request-id"])
    encoding = bpe_openai.get_encoding("o200k_base")
    assert row["usage_source"] == "estimated"
    assert row["input_tokens"] == len(encoding.encode(prompt))
    assert row["output_tokens"] == len(encoding.encode("hi"))
    # Encodings are built when a reply without usage first needs one, and only that one.
    log = gateway.log()
    assert "loaded tiktoken encoding o200k_base" in log
    assert "cl100k_base" not in log
