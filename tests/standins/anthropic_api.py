"""A stand-in for Anthropic's Messages API (`POST /v1/messages`), plain and streamed."""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from aiohttp import web

from tests.standins.base import RECEIVED, AnswerPlan, StandIn, new_id, sse
from tests.standins.recorder import ReceivedRequest, collect_text, count_words, deep_merge, sample_arguments

logger = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def pick_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Return the (name, input) of the tool_use block a request gets, or None for text.

    The first tool (or the one `tool_choice` names) is called unless `tool_choice` is
    `none` or the last user turn already carries a `tool_result`.
    """
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    if not tools or choice.get("type") == "none":
        return None
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return None
    chosen = tools[0]
    if choice.get("type") == "tool":
        chosen = next((t for t in tools if t.get("name") == choice.get("name")), chosen)
    return chosen.get("name", "tool"), sample_arguments(chosen.get("input_schema"))


class AnthropicStandIn(StandIn):
    """A stand-in for api.anthropic.com: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/models`."""

    provider: ClassVar[str] = "anthropic"
    default_models: ClassVar[list[str]] = ["claude-sonnet-4-5", "claude-haiku-4-5"]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/v1/models", self.list_models)

    def response_headers(self) -> dict[str, str]:
        return {"request-id": new_id("req_", 24)}

    def error_body(self, status: int, message: str) -> Any:
        return {
            "type": "error",
            "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": new_id("req_", 24),
        }

    def check_auth(self, request: web.Request, received: ReceivedRequest) -> web.Response | None:
        if not self.auth_required:
            return None
        # Newer SDKs (anthropic 2.x) send the API key as a Bearer token instead of x-api-key.
        key = received.header("x-api-key")
        bearer = received.header("Authorization") or ""
        if not key and bearer.lower().startswith("bearer "):
            key = bearer[7:].strip()
        if not key:
            return self.error_response(request, 401, self.error_body(401, "x-api-key header is required"))
        if self.require_key is not None and key != self.require_key:
            return self.error_response(request, 401, self.error_body(401, "invalid x-api-key"))
        if not received.header("anthropic-version"):
            return self.error_response(request, 400, self.error_body(400, "anthropic-version: header is required"))
        return None

    def usage_object(self, plan: AnswerPlan, output_tokens: int | None = None) -> dict[str, Any]:
        """Build a `usage` object; `input_tokens` excludes both cache buckets, as Anthropic counts."""
        usage = {
            "input_tokens": plan.prompt_words,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": plan.completion_words if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }
        merged = deep_merge(usage, plan.usage_patch)
        if output_tokens is not None:
            merged["output_tokens"] = output_tokens
        return merged

    def _prompt(self, body: dict[str, Any]) -> Any:
        return {"system": body.get("system"), "content": body.get("messages")}

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Handle POST /v1/messages, streamed when the body sets `stream: true`."""
        body = request[RECEIVED].json
        if not isinstance(body, dict) or "model" not in body or "messages" not in body:
            return self.error_response(request, 400, self.error_body(400, "model: Field required"))
        if "max_tokens" not in body:
            return self.error_response(request, 400, self.error_body(400, "max_tokens: Field required"))
        model = str(body["model"])
        if self.known_models is not None and model not in self.known_models:
            return self.error_response(request, 404, self.error_body(404, f"model: {model}"))
        plan = self.plan_answer(model, self._prompt(body))
        tool = pick_tool(body)
        if tool is not None:
            plan.completion_words = count_words(f"{tool[0]} {json.dumps(tool[1])}")
        message_id = new_id("msg_01", 24)
        if body.get("stream"):
            return await self._stream(request, plan, tool, message_id)
        if tool is None:
            content = [{"type": "text", "text": plan.text}]
        else:
            content = [{"type": "tool_use", "id": new_id("toolu_01", 24), "name": tool[0], "input": tool[1]}]
        result = self._message(plan, message_id, content, "end_turn" if tool is None else "tool_use")
        result["usage"] = self.usage_object(plan)
        return self.json_response(request, result)

    def _message(self, plan: AnswerPlan, message_id: str, content: list[Any], stop: str | None) -> dict[str, Any]:
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": plan.response_model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
        }

    async def _stream(
        self, request: web.Request, plan: AnswerPlan, tool: tuple[str, dict[str, Any]] | None, message_id: str
    ) -> web.StreamResponse:
        """Send message_start, content_block_start, ping, content_block_delta..., content_block_stop,
        message_delta (cumulative usage) and message_stop, each as a named SSE event."""
        response = await self.open_stream(request)
        start = self._message(plan, message_id, [], None)
        start["usage"] = self.usage_object(plan, output_tokens=1)
        if tool is None:
            block: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in plan.pieces]
        else:
            block = {"type": "tool_use", "id": new_id("toolu_01", 24), "name": tool[0], "input": {}}
            arguments = json.dumps(tool[1])
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": arguments[i : i + 8]} for i in range(0, len(arguments), 8)]

        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": block},
            {"type": "ping"},
        ]
        events += [{"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas]
        final_usage = self.usage_object(plan)
        final_usage.pop("cache_creation", None)
        final_usage.pop("service_tier", None)
        events += [
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn" if tool is None else "tool_use", "stop_sequence": None},
                "usage": final_usage,
            },
            {"type": "message_stop"},
        ]
        for index, event in enumerate(events):
            is_delta = event["type"] == "content_block_delta"
            await self.write_event(response, sse(event, event=event["type"]), is_delta and index > 3)
        await response.write_eof()
        return response

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """Handle POST /v1/messages/count_tokens with the prompt's word count."""
        body = request[RECEIVED].json or {}
        words = count_words(" ".join(collect_text(self._prompt(body))))
        return self.json_response(request, {"input_tokens": words})

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """Handle GET /v1/models in Anthropic's paginated list format."""
        models = self.known_models if self.known_models is not None else self.default_models
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in models
        ]
        return self.json_response(
            request,
            {"data": data, "has_more": False, "first_id": models[0] if models else None, "last_id": models[-1] if models else None},
        )
