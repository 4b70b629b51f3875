"""A stand-in ext_proc router: a real grpc.aio server on 127.0.0.1 for tests and manual runs.

Modes:
- `keywords`: sets `x-selected-model` from keywords in the last user message of an
  OpenAI chat body (qwen-coder, gemini-flash or gpt-4o, as in configs/homelab.yaml).
- `vllm`: as `keywords`, plus what vLLM Semantic Router does: rewrites an auto model name
  (`MoM`, `auto`, `vllm-sr/auto`) to the chosen model, adds
  `stream_options.include_usage` to streamed requests, re-sets `content-length`, answers
  `GET /v1/models` itself and switches SSE responses to streamed mode.
- `scripted`: a test supplies one function per phase that returns the reply.

The server records every ProcessingRequest, can be slowed down (`delay` seconds before each
reply) and restarted on the same port. Run `python -m tests.standins.extproc_server
--port 50051 --mode vllm` for manual tests.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

AUTO_MODELS = frozenset({"MoM", "auto", "vllm-sr/auto"})
KEYWORDS: list[tuple[tuple[str, ...], str]] = [
    (("code", "python", "function"), "qwen-coder"),
    (("gemini", "translate"), "gemini-flash"),
    (("analysis", "gpt"), "gpt-4o"),
]
PHASES = ("request_headers", "request_body", "request_trailers",
          "response_headers", "response_body", "response_trailers")

# A phase script gets the request message and the per-stream state dict, and returns one
# reply, a list of replies, None for no reply, or END_STREAM to close the stream cleanly
# (gRPC status OK). It may be async (to sleep) or raise (the stream fails with UNKNOWN).
Script = Callable[[pb.ProcessingRequest, dict[str, Any]], Any]
END_STREAM = object()


def choose_model(body: bytes) -> str | None:
    """Return the model name for the keywords in the last user message, or None."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    messages = payload.get("messages") if isinstance(payload, dict) else None
    text = ""
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            text = str(content or "").lower()
            break
    for words, model in KEYWORDS:
        if any(word in text for word in words):
            return model
    return None


def header(name: str, value: str, action: int = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD) -> base_pb2.HeaderValueOption:
    """Build a set_headers entry with the value in raw_value, as vLLM Semantic Router does."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode()), append_action=action)


def continue_reply(phase: str, mutation: pb.HeaderMutation | None = None,
                   body: bytes | None = None) -> pb.ProcessingResponse:
    """Build a CONTINUE reply of the kind that matches `phase`."""
    common = pb.CommonResponse(header_mutation=mutation)
    if body is not None:
        common.body_mutation.body = body
    if phase.endswith("trailers"):
        return pb.ProcessingResponse(**{phase: pb.TrailersResponse()})
    kind = pb.HeadersResponse if phase.endswith("headers") else pb.BodyResponse
    return pb.ProcessingResponse(**{phase: kind(response=common)})


def header_value(message: pb.HttpHeaders, name: str) -> str | None:
    """Return a header of a headers message, reading raw_value first, then value."""
    for entry in message.headers.headers:
        if entry.key.lower() == name:
            return entry.raw_value.decode() if entry.raw_value else entry.value
    return None


class ExtProcServer:
    """A stand-in router; `await start()` binds 127.0.0.1 (port 0 picks a free port)."""

    def __init__(self, mode: str = "keywords", port: int = 0,
                 scripts: dict[str, Script] | None = None, delay: float = 0.0) -> None:
        if mode not in ("keywords", "vllm", "scripted"):
            raise ValueError(f"unknown stand-in mode {mode!r}; use keywords, vllm or scripted")
        self.mode = mode
        self.port = port
        self.scripts: dict[str, Script] = dict(scripts or {})
        self.delay = delay
        # Seconds to keep a stream open after the client's half-close, as a slow router might.
        self.linger = 0.0
        self.received: list[pb.ProcessingRequest] = []
        self.streams: list[list[pb.ProcessingRequest]] = []
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        """Return the `host:port` the client dials."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start serving; a restart reuses the port picked the first time."""
        server = grpc.aio.server()
        pb_grpc.add_ExternalProcessorServicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop serving at once, cancelling open streams."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def reply_to(self, message: pb.ProcessingRequest, state: dict[str, Any]) -> list[Any]:
        """Return the replies to one message, after the configured delay."""
        if self.delay:
            await asyncio.sleep(self.delay)
        phase = message.WhichOneof("request")
        if self.mode == "scripted" and phase in self.scripts:
            result = self.scripts[phase](message, state)
            if inspect.isawaitable(result):
                result = await result
        else:
            result = self._router_reply(phase, message, state)
        if result is None:
            return []
        if result is END_STREAM:
            return [END_STREAM]
        return list(result) if isinstance(result, (list, tuple)) else [result]

    def _router_reply(self, phase: str, message: pb.ProcessingRequest, state: dict[str, Any]) -> Any:
        vllm = self.mode == "vllm"
        if phase == "request_headers":
            state["path"] = header_value(message.request_headers, ":path")
            state["method"] = header_value(message.request_headers, ":method")
            if vllm and state["method"] == "GET" and (state["path"] or "").startswith("/v1/models"):
                return models_reply()
            mutation = pb.HeaderMutation(set_headers=[header("accept-encoding", "identity")]) if vllm else None
            return continue_reply(phase, mutation)
        if phase == "request_body":
            state.setdefault("body", bytearray()).extend(message.request_body.body)
            if state.get("full_duplex") and not message.request_body.end_of_stream:
                return None  # wait for the whole body before replying
            return self._body_reply(bytes(state["body"]), state, vllm)
        if phase == "response_headers":
            return self._response_headers_reply(message, state, vllm)
        return continue_reply(phase)

    def _body_reply(self, body: bytes, state: dict[str, Any], vllm: bool) -> pb.ProcessingResponse:
        model = choose_model(body)
        state["model"] = model
        mutation = pb.HeaderMutation()
        if model is not None:
            mutation.set_headers.append(header("x-selected-model", model))
        new_body: bytes | None = None
        if vllm:
            new_body = rewrite_body(body, model)
            if new_body is not None:
                mutation.remove_headers.append("content-length")
                mutation.set_headers.append(header("content-length", str(len(new_body))))
        if state.get("full_duplex") and new_body is not None:
            reply = continue_reply("request_body", mutation)
            streamed = reply.request_body.response.body_mutation.streamed_response
            streamed.body, streamed.end_of_stream = new_body, True
            return reply
        return continue_reply("request_body", mutation, new_body)

    def _response_headers_reply(self, message: pb.ProcessingRequest, state: dict[str, Any], vllm: bool) -> pb.ProcessingResponse:
        mutation = pb.HeaderMutation()
        status = header_value(message.response_headers, ":status") or ""
        if vllm and state.get("model") and status.startswith("2"):
            mutation.set_headers.append(header("x-vsr-selected-model", state["model"]))
        reply = continue_reply("response_headers", mutation)
        content_type = header_value(message.response_headers, "content-type") or ""
        if vllm and "text/event-stream" in content_type:
            reply.mode_override.response_body_mode = processing_mode_pb2.ProcessingMode.STREAMED
        return reply


def rewrite_body(body: bytes, model: str | None) -> bytes | None:
    """Rewrite an auto model name and ask for stream usage, as vLLM Semantic Router does."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("model") not in AUTO_MODELS or model is None:
        return None
    payload["model"] = model
    if payload.get("stream") is True:
        payload.setdefault("stream_options", {})["include_usage"] = True
    return json.dumps(payload).encode()


def models_reply() -> pb.ProcessingResponse:
    """Build the immediate reply to `GET /v1/models`."""
    data = [{"id": name, "object": "model", "owned_by": "vllm-sr"}
            for name in ("MoM", "qwen-coder", "gpt-4o", "gemini-flash")]
    body = json.dumps({"object": "list", "data": data})
    reply = pb.ProcessingResponse()
    reply.immediate_response.status.code = 200
    reply.immediate_response.body = body.encode() if isinstance(reply.immediate_response.body, bytes) else body
    reply.immediate_response.headers.set_headers.append(header("content-type", "application/json"))
    return reply


class _Servicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, owner: ExtProcServer) -> None:
        self.owner = owner

    async def Process(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        received: list[pb.ProcessingRequest] = []
        self.owner.streams.append(received)
        state: dict[str, Any] = {}
        async for message in request_iterator:
            if message.HasField("protocol_config"):
                state["full_duplex"] = (message.protocol_config.request_body_mode
                                        == processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED)
            received.append(message)
            self.owner.received.append(message)
            for reply in await self.owner.reply_to(message, state):
                if reply is END_STREAM:
                    return
                yield reply
        if self.owner.linger:
            await asyncio.sleep(self.owner.linger)


def main() -> None:
    """Run the stand-in router until interrupted."""
    parser = argparse.ArgumentParser(description="Stand-in ext_proc router for meterway tests.")
    parser.add_argument("--port", type=int, default=50051, help="TCP port on 127.0.0.1 to listen on.")
    parser.add_argument("--mode", choices=("keywords", "vllm"), default="vllm", help="keywords sets x-selected-model; vllm also rewrites auto model names.")
    parser.add_argument("--delay", type=float, default=0.0, help="Seconds to wait before each reply.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    async def serve() -> None:
        server = ExtProcServer(args.mode, args.port, delay=args.delay)
        await server.start()
        logger.info("stand-in ext_proc router (%s) listening on %s", args.mode, server.target)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
