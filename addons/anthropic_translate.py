"""Translate OpenAI chat completions requests into Anthropic Messages requests.

`chat_to_messages()` turns the body of `POST /v1/chat/completions` into the body of
Anthropic's `POST /v1/messages`. The way back lives in `addons.anthropic_response`
(`messages_to_chat`, `error_to_openai`) and `addons.anthropic_stream` (`MessagesStreamToChat`);
they are re-exported here so a caller imports one module.

Fields either map to an Anthropic field, are dropped because Anthropic has no equivalent and
the response stays well-formed without them (`DROPPED_FIELDS`), or raise `TranslationError`
because the client would get a response other than the one it requested.
"""

from __future__ import annotations

import logging
from typing import Any

from addons.anthropic_content import TranslationError, translate_messages
from addons.anthropic_response import error_to_openai, messages_to_chat
from addons.anthropic_stream import MessagesStreamToChat

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DROPPED_FIELDS",
    "MessagesStreamToChat",
    "TranslationError",
    "chat_to_messages",
    "error_to_openai",
    "messages_to_chat",
]

logger = logging.getLogger(__name__)

# Anthropic requires `max_tokens` while OpenAI makes it optional. 4096 is the value
# agentgateway sends when the client sets none, and no Claude model has a lower output limit.
DEFAULT_MAX_TOKENS = 4096

# Request fields that Anthropic has no equivalent for and that leave the response's shape
# intact, so they are dropped. Sampling hints (seed, penalties, logit_bias) change which tokens
# are likely, so a client relying on them gets Claude's default sampling instead.
DROPPED_FIELDS = frozenset({
    "frequency_penalty", "logit_bias", "metadata", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "seed", "service_tier", "store", "stream_options",
    "verbosity", "web_search_options",
})

# Fields with a direct Anthropic counterpart or handled below, so never reported as unknown.
_HANDLED_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "stream", "user", "safety_identifier", "tools", "tool_choice", "reasoning_effort",
    "response_format", "logprobs", "top_logprobs", "modalities", "audio", "functions",
    "function_call",
})

# Thinking budgets (tokens) for OpenAI's `reasoning_effort`. Anthropic's minimum budget is
# 1024 tokens, and each larger step doubles it. `minimal` and `none` turn thinking off.
_THINKING_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}


def chat_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """Translate an OpenAI chat completions request body into an Anthropic Messages body.

    Raises `TranslationError` for a field or value that Anthropic cannot serve as asked.
    """
    if not isinstance(body, dict):
        raise TranslationError(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError(f"model must be a non-empty string, got {model!r}")
    _reject_unsupported(body)

    system, messages = translate_messages(body.get("messages"))
    result: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        result["system"] = system

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise TranslationError(f"max_completion_tokens must be a positive integer, got {max_tokens!r}")
    thinking = _thinking(body.get("reasoning_effort"), max_tokens, body)
    if thinking is not None:
        result["thinking"] = thinking
        if max_tokens is None:
            # The budget is part of max_tokens, so leave the usual room for the reply.
            max_tokens = thinking["budget_tokens"] + DEFAULT_MAX_TOKENS
    result["max_tokens"] = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens

    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 1:
            raise TranslationError(
                f"temperature {temperature!r} is outside Anthropic's range 0 to 1; "
                "send a temperature between 0 and 1 (OpenAI allows up to 2)"
            )
        result["temperature"] = temperature
    if body.get("top_p") is not None:
        result["top_p"] = body["top_p"]

    stop = body.get("stop")
    if isinstance(stop, str):
        result["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        result["stop_sequences"] = list(stop)
    elif stop is not None and stop != []:
        raise TranslationError(f"stop must be a string or a list of strings, got {stop!r}")

    if body.get("stream") is not None:
        result["stream"] = bool(body["stream"])

    user = body.get("user") or body.get("safety_identifier")
    if user:
        result["metadata"] = {"user_id": str(user)}

    tools = body.get("tools")
    if tools:
        result["tools"] = [_translate_tool(tool, i) for i, tool in enumerate(tools)]
        tool_choice = _translate_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if tool_choice is not None:
            result["tool_choice"] = tool_choice

    _log_dropped(body)
    return result


def _reject_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError(
            f"n={n!r} asks for several choices, but Anthropic returns one message per request; "
            "remove n or set it to 1, and send separate requests for more choices"
        )
    if body.get("logprobs") or body.get("top_logprobs"):
        raise TranslationError(
            "logprobs are not available from Anthropic; remove logprobs and top_logprobs"
        )
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise TranslationError(
            f"response_format type {response_format.get('type')!r} is not supported for Anthropic "
            "backends; describe the JSON you want in the prompt, or define a tool whose "
            "parameters are the schema and set tool_choice to that tool"
        )
    modalities = body.get("modalities")
    if body.get("audio") or (isinstance(modalities, list) and "audio" in modalities):
        raise TranslationError("audio output is not available from Anthropic; remove audio and modalities")
    if body.get("functions") or body.get("function_call"):
        raise TranslationError(
            "the deprecated functions and function_call fields are not translated; "
            "send tools and tool_choice instead"
        )


def _log_dropped(body: dict[str, Any]) -> None:
    dropped = sorted(key for key in body if key in DROPPED_FIELDS and key != "n")
    unknown = sorted(key for key in body if key not in DROPPED_FIELDS and key not in _HANDLED_FIELDS)
    if dropped or unknown:
        # Debug level: many clients send these on every request.
        logger.debug("chat -> messages dropped fields %s, unknown fields %s", dropped, unknown)


def _thinking(effort: Any, max_tokens: int | None, body: dict[str, Any]) -> dict[str, Any] | None:
    if effort is None or effort in ("none", "minimal"):
        return None
    if effort not in _THINKING_BUDGETS:
        raise TranslationError(
            f"reasoning_effort {effort!r} is not supported; use one of "
            f"{', '.join(['none', 'minimal', *_THINKING_BUDGETS])}"
        )
    budget = _THINKING_BUDGETS[effort]
    if max_tokens is not None and max_tokens <= budget:
        raise TranslationError(
            f"max_completion_tokens {max_tokens} must be larger than the thinking budget of "
            f"{budget} tokens that reasoning_effort {effort!r} sets; raise it above {budget} "
            "or lower reasoning_effort"
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise TranslationError(
            f"temperature {temperature!r} cannot be combined with reasoning_effort {effort!r}: "
            "Anthropic's extended thinking requires the default temperature; remove temperature"
        )
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        raise TranslationError(
            f"tool_choice {choice!r} forces a tool call, which Anthropic's extended thinking does "
            f"not allow; use tool_choice auto or none with reasoning_effort {effort!r}"
        )
    return {"type": "enabled", "budget_tokens": budget}


# -- tools ------------------------------------------------------------------------------------


def _translate_tool(tool: Any, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise TranslationError(f"tools[{index}] has type {kind!r}; only function tools translate to Anthropic")
    if not function.get("name"):
        raise TranslationError(f"tools[{index}].function needs a name")
    result: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        result["description"] = function["description"]
    # Anthropic requires an object schema, but OpenAI lets a tool without parameters omit it.
    result["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return result


def _translate_tool_choice(choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    if choice is None:
        result: dict[str, Any] | None = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}  # Anthropic rejects disable_parallel_tool_use with "none".
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise TranslationError(
            f"tool_choice {choice!r} is not supported; use auto, none, required or "
            '{"type": "function", "function": {"name": ...}}'
        )
    if parallel_tool_calls is False:
        result = result or {"type": "auto"}
        result["disable_parallel_tool_use"] = True
    return result
