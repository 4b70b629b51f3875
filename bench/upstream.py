"""A fast OpenAI-compatible upstream for the benchmarks, run in its own process.

    python -m bench.upstream --port 18001 --chunks 120 --pace-ms 10

`POST /v1/chat/completions` returns one fixed chat completion, or an SSE stream when the
body has `"stream": true`. The model name picks the behaviour, because every proxy under
test (LiteLLM too) passes the model through while it may drop unknown body fields:
- a model ending in `-paced` streams with `--pace-ms` between chunks;
- `bench-bulk` streams about `--bulk-mb` megabytes in 64 KiB events (the memory test);
- any other model streams `--chunks` chunks as fast as the socket takes them;
- a model ending in `-nousage` gets a completion without `usage`, so a gateway must count
  the tokens itself (the warm-up uses it to load meterway's tokenizer before measuring).
A final usage chunk follows when the request sets `stream_options.include_usage`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

BULK_EVENT_BYTES = 64 * 1024
USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}


def completion_body(model: str) -> bytes:
    """Build the fixed non-streamed chat completion for `model`."""
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "The benchmark answer is forty-two."}}],
        "usage": USAGE,
    }
    if model.endswith("-nousage"):
        del completion["usage"]
    return json.dumps(completion).encode()


def chunk_event(model: str, text: str, finish: str | None = None) -> bytes:
    """Build one SSE `data:` event of a chat completion stream."""
    delta = {"content": text} if finish is None else {}
    payload = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def usage_event(model: str) -> bytes:
    """Build the final usage chunk that `stream_options.include_usage` requests."""
    payload = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [], "usage": USAGE}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class Upstream:
    """The request handlers, configured by the command line."""

    def __init__(self, chunks: int, pace_ms: float, bulk_mb: int) -> None:
        self.chunks = chunks
        self.pace_s = pace_ms / 1000
        self.bulk_bytes = bulk_mb * 1024 * 1024

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model") or "gpt-4o-mini")
        if not body.get("stream"):
            return web.Response(body=completion_body(model), content_type="application/json")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        if model == "bench-bulk":
            await self._bulk(response, model)
        else:
            pace = self.pace_s if model.endswith("-paced") else 0.0
            for index in range(self.chunks):
                if pace:
                    await asyncio.sleep(pace)
                await response.write(chunk_event(model, f"tok{index} "))
            await response.write(chunk_event(model, "", finish="stop"))
        if include_usage:
            await response.write(usage_event(model))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _bulk(self, response: web.StreamResponse, model: str) -> None:
        text = "x" * BULK_EVENT_BYTES
        event = chunk_event(model, text)
        for _ in range(max(1, self.bulk_bytes // len(event))):
            await response.write(event)
        await response.write(chunk_event(model, "", finish="stop"))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})


def build_app(upstream: Upstream) -> web.Application:
    """Create the aiohttp application with the OpenAI routes."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", upstream.chat)
    app.router.add_get("/v1/models", upstream.models)
    return app


def main() -> None:
    """Serve on 127.0.0.1 until interrupted."""
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible upstream for meterway benchmarks.")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1.")
    parser.add_argument("--chunks", type=int, default=120, help="Content chunks per stream.")
    parser.add_argument("--pace-ms", type=float, default=10.0, help="Milliseconds between chunks for -paced models.")
    parser.add_argument("--bulk-mb", type=int, default=100, help="Megabytes that the bench-bulk model streams.")
    args = parser.parse_args()
    upstream = Upstream(args.chunks, args.pace_ms, args.bulk_mb)
    web.run_app(build_app(upstream), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
