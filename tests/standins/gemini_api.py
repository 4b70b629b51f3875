"""A stand-in for the Gemini API: native `generateContent` and the OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from aiohttp import web

from tests.standins.base import RECEIVED, AnswerPlan, new_id, sse
from tests.standins.openai_api import OpenAIStandIn
from tests.standins.recorder import ReceivedRequest, count_words, deep_merge, sample_arguments

logger = logging.getLogger(__name__)

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# google-genai 3.x calls /v1 by default, older SDKs and most docs /v1beta: serve both.
_NATIVE_PREFIXES = ("/v1beta/models", "/v1/models")


def pick_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Return the (name, args) of the functionCall a native request gets, or None for text.

    The first function declaration is called unless function calling mode is NONE or the
    last turn already carries a `functionResponse`.
    """
    declarations = [d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []]
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if not declarations or (mode or "").upper() == "NONE":
        return None
    contents = body.get("contents") or []
    last_parts = (contents[-1].get("parts") or []) if contents and isinstance(contents[-1], dict) else []
    if any(isinstance(part, dict) and "functionResponse" in part for part in last_parts):
        return None
    chosen = declarations[0]
    return chosen.get("name", "tool"), sample_arguments(chosen.get("parameters") or chosen.get("parametersJsonSchema"))


class GeminiStandIn(OpenAIStandIn):
    """A stand-in for generativelanguage.googleapis.com.

    Native (under `/v1beta` and `/v1`): `POST /v1beta/models/{model}:generateContent`, `...:streamGenerateContent`
    (`?alt=sse` for SSE, else a streamed JSON array) and `GET /v1beta/models`, with the key
    in `x-goog-api-key` or `?key=`. OpenAI-compatible: the OpenAI stand-in's routes under
    `/v1beta/openai/`, with a Bearer key.
    """

    provider: ClassVar[str] = "gemini"
    usage_details: ClassVar[bool] = False
    path_prefix: ClassVar[str] = "/v1beta/openai"
    stream_usage_style: ClassVar[str] = "gemini"
    serves_responses: ClassVar[bool] = False
    default_models: ClassVar[list[str]] = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001"]

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        for prefix in _NATIVE_PREFIXES:
            app.router.add_post(prefix + "/{call}", self.native_call)
            app.router.add_get(prefix, self.native_models)

    def response_headers(self) -> dict[str, str]:
        return {"x-gemini-service-tier": "standard"}

    def completion_extras(self) -> dict[str, Any]:
        return {}

    def model_entry(self, model: str) -> dict[str, Any]:
        return {"id": f"models/{model}", "object": "model", "owned_by": "google"}

    def error_body(self, status: int, message: str, **_: Any) -> Any:
        return {"error": {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}}

    def check_auth(self, request: web.Request, received: ReceivedRequest) -> web.Response | None:
        if not self.auth_required:
            return None
        if received.path.startswith(self.path_prefix):
            header = received.header("Authorization") or ""
            key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        else:
            key = received.header("x-goog-api-key") or received.query.get("key", "")
        if not key:
            message = (
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API."
            )
            return self.error_response(request, 403, self.error_body(403, message))
        if self.require_key is not None and key != self.require_key:
            return self.error_response(request, 400, self.error_body(400, "API key not valid. Please pass a valid API key."))
        return None

    # -- native API ------------------------------------------------------------------------

    def usage_metadata(self, plan: AnswerPlan, candidates: int | None = None) -> dict[str, Any]:
        """Build `usageMetadata`; zero thoughts and cache counts are left out, as Gemini does.

        `totalTokenCount` is prompt + candidates + thoughts; `cachedContentTokenCount` is a
        part of `promptTokenCount`.
        """
        metadata: dict[str, Any] = {
            "promptTokenCount": plan.prompt_words,
            "candidatesTokenCount": plan.completion_words if candidates is None else candidates,
            "totalTokenCount": 0,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_words}],
        }
        merged = deep_merge(metadata, plan.usage_patch)
        if candidates is not None:
            merged["candidatesTokenCount"] = candidates
        if not plan.usage_patch or "totalTokenCount" not in plan.usage_patch:
            merged["totalTokenCount"] = (
                merged["promptTokenCount"] + merged["candidatesTokenCount"] + merged.get("thoughtsTokenCount", 0)
            )
        return merged

    async def native_call(self, request: web.Request) -> web.StreamResponse:
        """Handle POST /v1beta/models/{model}:{method} for generateContent and streamGenerateContent."""
        model, _, method = request.match_info["call"].partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return self.error_response(request, 404, self.error_body(404, f"Method {method!r} is not served by the stand-in."))
        body = request[RECEIVED].json
        if not isinstance(body, dict) or not body.get("contents"):
            return self.error_response(request, 400, self.error_body(400, "* GenerateContentRequest.contents: contents is not specified"))
        if self.known_models is not None and model not in self.known_models:
            message = f"models/{model} is not found for API version {request.path.split('/')[1]}, or is not supported for {method}."
            return self.error_response(request, 404, self.error_body(404, message))
        plan = self.plan_answer(model, {"contents": body.get("contents"), "system": body.get("systemInstruction")})
        tool = pick_tool(body)
        if tool is not None:
            plan.completion_words = count_words(f"{tool[0]} {json.dumps(tool[1])}")
        response_id = new_id("", 22)
        if method == "generateContent":
            parts = [{"functionCall": {"name": tool[0], "args": tool[1]}}] if tool else [{"text": plan.text}]
            return self.json_response(request, self._candidate_response(plan, parts, True, self.usage_metadata(plan), response_id))
        return await self._native_stream(request, plan, tool, response_id, request.query.get("alt") == "sse")

    def _candidate_response(
        self, plan: AnswerPlan, parts: list[dict[str, Any]], last: bool, usage: dict[str, Any], response_id: str
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": plan.response_model, "responseId": response_id}

    async def _native_stream(
        self,
        request: web.Request,
        plan: AnswerPlan,
        tool: tuple[str, dict[str, Any]] | None,
        response_id: str,
        as_sse: bool,
    ) -> web.StreamResponse:
        """Stream one GenerateContentResponse per piece, usageMetadata (running totals) on each.

        With `alt=sse` every event ends in CRLF CRLF, as Gemini sends them; without it the
        body is one JSON array written element by element.
        """
        content_type = "text/event-stream" if as_sse else "application/json; charset=UTF-8"
        response = await self.open_stream(request, content_type=content_type)
        if tool is not None:
            steps = [([{"functionCall": {"name": tool[0], "args": tool[1]}}], plan.completion_words)]
        else:
            steps, sent = [], ""
            for piece in plan.pieces:
                sent += piece
                steps.append(([{"text": piece}], count_words(sent)))
        for index, (parts, candidates) in enumerate(steps):
            last = index == len(steps) - 1
            chunk = self._candidate_response(plan, parts, last, self.usage_metadata(plan, candidates), response_id)
            if as_sse:
                data = sse(chunk, separator="\r\n\r\n")
            else:
                opening = b"[" if index == 0 else b",\r\n"
                closing = b"]" if last else b""
                data = opening + json.dumps(chunk).encode() + closing
            await self.write_event(response, data, index > 0)
        await response.write_eof()
        return response

    async def native_models(self, request: web.Request) -> web.StreamResponse:
        """Handle GET /v1beta/models in the native list format."""
        models = self.known_models if self.known_models is not None else self.default_models
        entries = [
            {
                "name": f"models/{m}",
                "displayName": m,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }
            for m in models
        ]
        return self.json_response(request, {"models": entries})
