"""OpenAI's wire format: chat completions, Responses, embeddings, models and errors.

The Gemini and Ollama stand-ins reuse this class for their OpenAI-compatible endpoints and
change only what those servers do differently (path prefix, where stream usage goes,
error bodies).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import struct
import time
from typing import Any, ClassVar

from aiohttp import web

from tests.standins import openai_responses
from tests.standins.base import RECEIVED, AnswerPlan, StandIn, new_id, sse
from tests.standins.recorder import ReceivedRequest, collect_text, count_words, deep_merge, sample_arguments

logger = logging.getLogger(__name__)


def pick_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Return the (name, arguments) of the tool call a chat request gets, or None for text.

    The stand-in calls the first tool (or the one `tool_choice` names) unless the request
    has no tools, `tool_choice` is "none", or the last message already is a tool result,
    so an agent loop ends after one round trip.
    """
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    messages = body.get("messages") or []
    if not tools or choice == "none":
        return None
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    chosen = tools[0].get("function", tools[0])
    if isinstance(choice, dict):
        requested_name = (choice.get("function") or {}).get("name")
        for tool in tools:
            function = tool.get("function", tool)
            if function.get("name") == requested_name:
                chosen = function
    return chosen.get("name", "tool"), sample_arguments(chosen.get("parameters"))


class OpenAIStandIn(StandIn):
    """A stand-in for api.openai.com (`/v1/chat/completions`, `/v1/responses`, ...)."""

    provider: ClassVar[str] = "openai"
    path_prefix: ClassVar[str] = "/v1"
    # Where a stream's usage goes: "openai" = `"usage": null` on every chunk and a last
    # chunk with `"choices": []`, only with include_usage; "ollama" = same last chunk but no
    # usage key elsewhere; "gemini" = usage on the finish chunk, always.
    stream_usage_style: ClassVar[str] = "openai"
    serves_responses: ClassVar[bool] = True
    # Whether chat usage carries `prompt_tokens_details` and `completion_tokens_details`.
    # The Gemini and Ollama stand-ins turn it off and send only the three counts.
    usage_details: ClassVar[bool] = True
    default_models: ClassVar[list[str]] = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    embedding_dimensions = 16

    def add_routes(self, app: web.Application) -> None:
        prefix = self.path_prefix
        app.router.add_post(f"{prefix}/chat/completions", self.chat_completions)
        app.router.add_post(f"{prefix}/embeddings", self.embeddings)
        app.router.add_get(f"{prefix}/models", self.list_models)
        app.router.add_get(f"{prefix}/models/{{model:.+}}", self.get_model)
        if self.serves_responses:
            app.router.add_post(f"{prefix}/responses", self.responses)

    # -- auth and errors -----------------------------------------------------------------

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": new_id("req_", 32), "openai-processing-ms": "1"}

    def check_auth(self, request: web.Request, received: ReceivedRequest) -> web.Response | None:
        if not self.auth_required:
            return None
        header = received.header("Authorization") or ""
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not key:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return self.error_response(request, 401, self.error_body(401, message, code=None))
        if self.require_key is not None and key != self.require_key:
            message = f"Incorrect API key provided: {_mask(key)}."
            return self.error_response(request, 401, self.error_body(401, message, code="invalid_api_key"))
        return None

    def error_body(self, status: int, message: str, code: str | None = "default", param: str | None = None) -> Any:
        types = {401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error",
                 429: "requests", 500: "server_error", 503: "server_error"}
        codes = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
        return {
            "error": {
                "message": message,
                "type": types.get(status, "invalid_request_error"),
                "param": param,
                "code": codes.get(status) if code == "default" else code,
            }
        }

    def model_error(self, request: web.Request, model: str) -> web.Response | None:
        """Return the provider's 404 for a model outside `known_models`, else None."""
        if self.known_models is None or model in self.known_models:
            return None
        message = f"The model `{model}` does not exist or you do not have access to it."
        return self.error_response(request, 404, self.error_body(404, message, param="model"))

    # -- chat completions ------------------------------------------------------------------

    def usage_object(self, plan: AnswerPlan) -> dict[str, Any]:
        """Build the chat `usage` object for `plan`, overrides merged in."""
        usage: dict[str, Any] = {
            "prompt_tokens": plan.prompt_words,
            "completion_tokens": plan.completion_words,
            "total_tokens": plan.prompt_words + plan.completion_words,
        }
        if self.usage_details:
            usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
            usage["completion_tokens_details"] = {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        return _with_total(usage, plan.usage_patch, "prompt_tokens", "completion_tokens", "total_tokens")

    def completion_extras(self) -> dict[str, Any]:
        """Return top-level fields every completion and chunk carries."""
        return {"service_tier": "default", "system_fingerprint": "fp_standin0"}

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Handle POST .../chat/completions, streamed when the body sets `stream: true`."""
        body = request[RECEIVED].json
        if not isinstance(body, dict) or "model" not in body or "messages" not in body:
            message = "Invalid request: the body must be a JSON object with `model` and `messages`."
            return self.error_response(request, 400, self.error_body(400, message))
        model = str(body["model"])
        missing = self.model_error(request, model)
        if missing is not None:
            return missing
        plan = self.plan_answer(model, body["messages"])
        tool = pick_tool(body)
        if tool is not None:
            arguments = json.dumps(tool[1])
            plan.completion_words = count_words(f"{tool[0]} {arguments}")
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream_chat(request, plan, tool, include)

        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        finish = "stop"
        if tool is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [_tool_call(tool, 0)]}
            finish = "tool_calls"
        if self.provider == "openai":
            message.update({"refusal": None, "annotations": []})
        result = {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": plan.response_model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": self.usage_object(plan),
            **self.completion_extras(),
        }
        return self.json_response(request, result)

    async def _stream_chat(
        self, request: web.Request, plan: AnswerPlan, tool: tuple[str, dict[str, Any]] | None, include_usage: bool
    ) -> web.StreamResponse:
        response = await self.open_stream(request)
        chunk_id = new_id("chatcmpl-")
        created = int(time.time())
        style = self.stream_usage_style

        def chunk(choices: list[dict[str, Any]], usage: Any = None, with_usage_key: bool = False) -> bytes:
            data: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": plan.response_model,
                **self.completion_extras(),
                "choices": choices,
            }
            if with_usage_key or (style == "openai" and include_usage):
                data["usage"] = usage
            return sse(data)

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        deltas = self._stream_deltas(plan, tool)
        finish = "stop" if tool is None else "tool_calls"
        first = True
        for index, delta in enumerate(deltas):
            last = index == len(deltas) - 1
            if style == "gemini" and last:
                # Gemini's compatible endpoint ends with one chunk that carries the last
                # text, the finish reason and the usage, whether or not it was requested.
                # NOTE: modelled on users' reports of the live endpoint; Google's docs
                # do not describe where stream usage goes.
                await self.write_event(response, chunk(choice(delta, finish), self.usage_object(plan), True), not first)
                break
            await self.write_event(response, chunk(choice(delta)), not first)
            first = False
        if style != "gemini":
            closing = {} if style == "openai" else {"role": "assistant", "content": ""}
            await self.write_event(response, chunk(choice(closing, finish)), False)
            if include_usage:
                await self.write_event(response, chunk([], self.usage_object(plan), True), False)
        await self.write_event(response, b"data: [DONE]\n\n", False)
        await response.write_eof()
        return response

    def _stream_deltas(self, plan: AnswerPlan, tool: tuple[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
        """Return the `delta` objects of a chat stream, before the finish chunk."""
        style = self.stream_usage_style
        if tool is not None:
            arguments = json.dumps(tool[1])
            if style != "openai":
                return [{"role": "assistant", "content": "" if style == "ollama" else None,
                         "tool_calls": [_tool_call(tool, 0, with_index=True)]}]
            call = _tool_call((tool[0], {}), 0, with_index=True)
            call["function"]["arguments"] = ""
            first = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
            pieces = [arguments[i : i + 8] for i in range(0, len(arguments), 8)]
            return [first] + [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
        if style == "openai":
            first = {"role": "assistant", "content": "", "refusal": None}
            return [first] + [{"content": piece} for piece in plan.pieces]
        return [{"role": "assistant", "content": piece} for piece in plan.pieces]

    # -- Responses API, embeddings, models -------------------------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """Handle POST .../responses (OpenAI's Responses API)."""
        body = request[RECEIVED].json
        if not isinstance(body, dict) or "model" not in body:
            return self.error_response(request, 400, self.error_body(400, "Missing required parameter: 'model'."))
        missing = self.model_error(request, str(body["model"]))
        if missing is not None:
            return missing
        plan = self.plan_answer(str(body["model"]), {"input": body.get("input"), "instructions": body.get("instructions")})
        if body.get("stream"):
            response = await self.open_stream(request)
            for index, event in enumerate(openai_responses.stream_events(plan, body)):
                await self.write_event(response, sse(event, event=event["type"]), index > 2)
            await response.write_eof()
            return response
        return self.json_response(request, openai_responses.response_object(plan, body, "completed"))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """Handle POST .../embeddings with deterministic vectors derived from each input."""
        body = request[RECEIVED].json
        if not isinstance(body, dict) or "input" not in body or "model" not in body:
            return self.error_response(request, 400, self.error_body(400, "'input' and 'model' are required."))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dimensions = int(body.get("dimensions") or self.embedding_dimensions)
        data = []
        for index, item in enumerate(inputs):
            vector = _vector(json.dumps(item), dimensions)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        words = sum(count_words(" ".join(collect_text(i))) or len(i) for i in inputs if i is not None)
        usage = _with_total({"prompt_tokens": words, "total_tokens": words}, self.next_usage, "prompt_tokens", None, "total_tokens")
        self.next_usage = None
        return self.json_response(request, {"object": "list", "data": data, "model": body["model"], "usage": usage})

    def model_entry(self, model: str) -> dict[str, Any]:
        """Return one entry of the models list."""
        return {"id": model, "object": "model", "created": 1700000000, "owned_by": self.provider}

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """Handle GET .../models with `known_models` (or the defaults)."""
        models = self.known_models if self.known_models is not None else self.default_models
        return self.json_response(request, {"object": "list", "data": [self.model_entry(m) for m in models]})

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        """Handle GET .../models/{model}."""
        model = request.match_info["model"]
        missing = self.model_error(request, model)
        return missing or self.json_response(request, self.model_entry(model))


def _tool_call(tool: tuple[str, dict[str, Any]], index: int, with_index: bool = False) -> dict[str, Any]:
    call: dict[str, Any] = {
        "id": new_id("call_"),
        "type": "function",
        "function": {"name": tool[0], "arguments": json.dumps(tool[1])},
    }
    if with_index:
        call = {"index": index, **call}
    return call


def _with_total(usage: dict[str, Any], patch: dict[str, Any] | None, input_key: str, output_key: str | None, total_key: str) -> dict[str, Any]:
    """Merge `patch` into `usage` and recompute the total unless the patch sets it."""
    merged = deep_merge(usage, patch)
    if not patch or total_key not in patch:
        merged[total_key] = merged[input_key] + (merged[output_key] if output_key else 0)
    return merged


def _vector(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 128) / 128.0, 6) for i in range(dimensions)]


def _mask(key: str) -> str:
    return key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * len(key)
