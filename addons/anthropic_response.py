"""Translate Anthropic Messages responses and errors into OpenAI chat completions."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

# Anthropic `stop_reason` -> OpenAI `finish_reason`. `pause_turn` (a server tool paused a
# long turn) and `refusal` have no exact OpenAI value, so they map to the nearest one.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error `type` -> OpenAI error `type`. The Anthropic type is kept as `code`.
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "server_error",
}


def finish_reason(stop_reason: str | None) -> str:
    """Map an Anthropic `stop_reason` to an OpenAI `finish_reason` (`stop` when unknown)."""
    if stop_reason is None:
        return "stop"
    reason = FINISH_REASONS.get(stop_reason)
    if reason is None:
        logger.debug("unknown Anthropic stop_reason %r, reported as stop", stop_reason)
        return "stop"
    return reason


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Convert an Anthropic `usage` object into an OpenAI chat completions `usage` object.

    Anthropic's `input_tokens` excludes both cache buckets while OpenAI's `prompt_tokens`
    counts every input token, so the buckets are added back. `cached_tokens` is the
    cache-read part, as in OpenAI's own usage.
    """
    if not isinstance(usage, dict):
        return None
    input_tokens = _count(usage.get("input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    cache_read = _count(usage.get("cache_read_input_tokens"))
    output_tokens = _count(usage.get("output_tokens"))
    prompt_tokens = input_tokens + cache_write + cache_read
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": prompt_tokens + output_tokens,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def messages_to_chat(response: dict[str, Any], requested_model: str | None = None) -> dict[str, Any]:
    """Translate an Anthropic Messages response body into an OpenAI chat completion.

    `model` is the model Anthropic reports; `requested_model` fills it when the response
    names none. Text blocks join into `content`, and `tool_use` blocks become `tool_calls`
    with the input serialised as JSON. Thinking blocks are returned as `reasoning_content`,
    the field several OpenAI-compatible servers use, because chat completions has none.
    """
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in response.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            tool_calls.append({
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                },
            })
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
        else:
            # redacted_thinking, server tool blocks and future types have no chat form.
            logger.debug("skipped an Anthropic %r content block", kind)

    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null content for a reply that is only tool calls.
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)

    result: dict[str, Any] = {
        "id": response.get("id") or "",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.get("model") or requested_model or "",
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason(response.get("stop_reason")),
        }],
    }
    usage = chat_usage(response.get("usage"))
    if usage is not None:
        result["usage"] = usage
    return result


def error_to_openai(body: dict[str, Any], status: int) -> dict[str, Any]:
    """Translate an Anthropic error body into an OpenAI error body.

    Anthropic's error body is `{"type": "error", "error": {"type", "message"}}`. The OpenAI
    body is `{"error": {"message", "type", "param", "code"}}` with Anthropic's error type as
    `code`. A body of another shape still gives a readable message with the HTTP status.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        anthropic_type = error.get("type")
        message = error.get("message") or f"Anthropic returned HTTP {status}"
    else:
        anthropic_type = None
        text = json.dumps(body, ensure_ascii=False)[:500] if body else ""
        message = f"Anthropic returned HTTP {status}" + (f": {text}" if text else "")
    if isinstance(anthropic_type, str) and anthropic_type in _ERROR_TYPES:
        kind = _ERROR_TYPES[anthropic_type]
    else:
        kind = "server_error" if status >= 500 else "invalid_request_error"
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": None,
            "code": anthropic_type if isinstance(anthropic_type, str) else None,
        }
    }
