"""A stand-in for a local Ollama server: `/v1/...` (OpenAI-compatible) and native `/api/...`."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, ClassVar

from aiohttp import web

from tests.standins.base import RECEIVED, AnswerPlan
from tests.standins.openai_api import OpenAIStandIn, pick_tool
from tests.standins.recorder import count_words, deep_merge

logger = logging.getLogger(__name__)


class OllamaStandIn(OpenAIStandIn):
    """A stand-in for Ollama on localhost:11434, without authentication.

    `/v1/chat/completions` follows Ollama's OpenAI layer: chunks carry no `usage` key, and a
    last chunk with `"choices": []` and the usage comes only with
    `stream_options.include_usage`. Native `/api/chat` and `/api/generate` stream NDJSON
    (one JSON object a line, the last with `done: true`, `prompt_eval_count` and `eval_count`).
    """

    provider: ClassVar[str] = "ollama"
    usage_details: ClassVar[bool] = False
    stream_usage_style: ClassVar[str] = "ollama"
    serves_responses: ClassVar[bool] = False
    # Ollama ignores credentials; a gateway may still send one.
    requires_auth: ClassVar[bool] = False
    default_models: ClassVar[list[str]] = ["qwen2.5-coder:7b", "llama3.2:3b"]


    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_post("/api/chat", self.native_chat)
        app.router.add_post("/api/generate", self.native_generate)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/version", self.version)

    def response_headers(self) -> dict[str, str]:
        return {}

    def completion_extras(self) -> dict[str, Any]:
        return {"system_fingerprint": "fp_ollama"}

    def model_entry(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 1700000000, "owned_by": "library"}

    def error_body(self, status: int, message: str, **_: Any) -> Any:
        kinds = {400: "invalid_request_error", 404: "not_found_error"}
        return {"error": {"message": message, "type": kinds.get(status, "api_error"), "param": None, "code": None}}

    def error_body_for(self, request: web.Request, status: int, message: str) -> Any:
        if request.path.startswith("/api/"):
            return {"error": message}
        return self.error_body(status, message)

    def model_error(self, request: web.Request, model: str) -> web.Response | None:
        if self.known_models is None or model in self.known_models:
            return None
        message = f'model "{model}" not found, try pulling it first'
        return self.error_response(request, 404, self.error_body_for(request, 404, message))

    # -- native API ------------------------------------------------------------------------

    def _final_fields(self, plan: AnswerPlan) -> dict[str, Any]:
        """Return the `done: true` fields: reason, durations (ns) and token counts."""
        fields = {
            "done_reason": "stop",
            "done": True,
            "total_duration": 5_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": plan.prompt_words,
            "prompt_eval_duration": 1_000_000,
            "eval_count": plan.completion_words,
            "eval_duration": 3_000_000,
        }
        return deep_merge(fields, plan.usage_patch)

    async def native_chat(self, request: web.Request) -> web.StreamResponse:
        """Handle POST /api/chat; streams NDJSON unless the body sets `stream: false`."""
        body = request[RECEIVED].json
        if not isinstance(body, dict) or not body.get("model"):
            return self.error_response(request, 400, {"error": "model is required"})
        model = str(body["model"])
        missing = self.model_error(request, model)
        if missing is not None:
            return missing
        plan = self.plan_answer(model, body.get("messages"))
        tool = pick_tool(body)
        messages: list[dict[str, Any]]
        if tool is not None:
            plan.completion_words = count_words(f"{tool[0]} {json.dumps(tool[1])}")
            call = {"id": "call_standin0", "function": {"index": 0, "name": tool[0], "arguments": tool[1]}}
            messages = [{"role": "assistant", "content": "", "tool_calls": [call]}]
        else:
            messages = [{"role": "assistant", "content": piece} for piece in plan.pieces]
        if body.get("stream", True) is False:
            full = {"role": "assistant", "content": plan.text if tool is None else ""}
            if tool is not None:
                full["tool_calls"] = messages[0]["tool_calls"]
            return self.json_response(request, {**self._head(plan), "message": full, **self._final_fields(plan)})
        lines = [{**self._head(plan), "message": m, "done": False} for m in messages]
        lines.append({**self._head(plan), "message": {"role": "assistant", "content": ""}, **self._final_fields(plan)})
        return await self._write_lines(request, lines)

    async def native_generate(self, request: web.Request) -> web.StreamResponse:
        """Handle POST /api/generate; streams NDJSON unless the body sets `stream: false`."""
        body = request[RECEIVED].json
        if not isinstance(body, dict) or not body.get("model"):
            return self.error_response(request, 400, {"error": "model is required"})
        missing = self.model_error(request, str(body["model"]))
        if missing is not None:
            return missing
        plan = self.plan_answer(str(body["model"]), {"content": body.get("prompt"), "system": body.get("system")})
        if body.get("stream", True) is False:
            return self.json_response(request, {**self._head(plan), "response": plan.text, **self._final_fields(plan)})
        lines = [{**self._head(plan), "response": piece, "done": False} for piece in plan.pieces]
        lines.append({**self._head(plan), "response": "", **self._final_fields(plan)})
        return await self._write_lines(request, lines)

    def _head(self, plan: AnswerPlan) -> dict[str, Any]:
        return {"model": plan.response_model, "created_at": datetime.now(timezone.utc).isoformat()}

    async def _write_lines(self, request: web.Request, lines: list[dict[str, Any]]) -> web.StreamResponse:
        response = await self.open_stream(request, content_type="application/x-ndjson")
        for index, line in enumerate(lines):
            await self.write_event(response, json.dumps(line).encode() + b"\n", index > 0)
        await response.write_eof()
        return response

    async def tags(self, request: web.Request) -> web.StreamResponse:
        """Handle GET /api/tags with the installed models (`known_models` or the defaults)."""
        models = self.known_models if self.known_models is not None else self.default_models
        stamp = datetime.fromtimestamp(time.time(), timezone.utc).isoformat()
        entries = [
            {
                "name": m,
                "model": m,
                "modified_at": stamp,
                "size": 4_683_087_332,
                "digest": "0" * 64,
                "details": {"format": "gguf", "family": m.split(":")[0], "parameter_size": "7B", "quantization_level": "Q4_K_M"},
            }
            for m in models
        ]
        return self.json_response(request, {"models": entries})

    async def version(self, request: web.Request) -> web.StreamResponse:
        """Handle GET /api/version."""
        return self.json_response(request, {"version": "0.12.0"})
