"""The `Usage` record and the per-provider rules that turn a usage object into one.

Each `*_usage` function reads one provider's usage object as the provider documents it.
`addons/usage.py` also gets the same numbers from genai-prices where its extractor covers the
format, and these functions are the reference its results are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

UsageSource = Literal["provider", "estimated", "none"]


@dataclass
class Usage:
    """Token counts of one request.

    `input_tokens` is all input, cache buckets included; `cached_input_tokens` (cache reads)
    and `cache_write_tokens` are parts of it. `output_tokens` is all output, reasoning included;
    `reasoning_tokens` is part of it. A field is None when it was neither reported nor estimated.
    """

    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    source: UsageSource = "none"
    response_model: str | None = None

    @property
    def total_tokens(self) -> int | None:
        """Input plus output tokens, or None when neither is known."""
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    @property
    def is_empty(self) -> bool:
        """True when the record has no input or output count."""
        return self.input_tokens is None and self.output_tokens is None

    def counts(self) -> tuple[int | None, ...]:
        """Return the five token fields, for comparing two records."""
        return (self.input_tokens, self.cached_input_tokens, self.cache_write_tokens,
                self.output_tokens, self.reasoning_tokens)


def as_int(value: Any) -> int:
    """Return a token count as int; a missing, negative or non-numeric value counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def nested(obj: Any, *path: str) -> Any:
    """Return `obj[path[0]][path[1]]...`, or None where a step is missing or not a dict."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def openai_chat_usage(usage: dict[str, Any], *, gemini_compat: bool = False) -> Usage:
    """Read a chat completions `usage` object.

    `cached_tokens` is part of `prompt_tokens` and `reasoning_tokens` part of
    `completion_tokens`, so neither is added again.

    With `gemini_compat`, Gemini's OpenAI-compatible endpoint is read: its `completion_tokens`
    leaves out thinking tokens while `total_tokens` includes them (a streamed reply reported
    prompt 9, completion 1, total 103). The difference is added to output as reasoning.
    """
    input_tokens = as_int(usage.get("prompt_tokens"))
    output_tokens = as_int(usage.get("completion_tokens"))
    reasoning = as_int(nested(usage, "completion_tokens_details", "reasoning_tokens"))
    if gemini_compat:
        unreported = as_int(usage.get("total_tokens")) - input_tokens - output_tokens
        if unreported > 0:
            output_tokens += unreported
            reasoning = max(reasoning, unreported)
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=as_int(nested(usage, "prompt_tokens_details", "cached_tokens")),
        cache_write_tokens=as_int(nested(usage, "prompt_tokens_details", "cache_write_tokens")),
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        source="provider",
    )


def openai_responses_usage(usage: dict[str, Any]) -> Usage:
    """Read a Responses API `usage` object (cached and reasoning tokens are subsets)."""
    return Usage(
        input_tokens=as_int(usage.get("input_tokens")),
        cached_input_tokens=as_int(nested(usage, "input_tokens_details", "cached_tokens")),
        cache_write_tokens=as_int(nested(usage, "input_tokens_details", "cache_write_tokens")),
        output_tokens=as_int(usage.get("output_tokens")),
        reasoning_tokens=as_int(nested(usage, "output_tokens_details", "reasoning_tokens")),
        source="provider",
    )


def openai_embeddings_usage(usage: dict[str, Any]) -> Usage:
    """Read an embeddings `usage` object: input only, no output tokens."""
    return Usage(input_tokens=as_int(usage.get("prompt_tokens")), cached_input_tokens=0,
                 cache_write_tokens=0, output_tokens=0, reasoning_tokens=0, source="provider")


def anthropic_usage(usage: dict[str, Any]) -> Usage:
    """Read an Anthropic Messages `usage` object.

    Anthropic's `input_tokens` excludes both cache buckets, so all input is the sum of
    `input_tokens`, `cache_creation_input_tokens` and `cache_read_input_tokens`.
    """
    cache_write = as_int(usage.get("cache_creation_input_tokens"))
    cache_read = as_int(usage.get("cache_read_input_tokens"))
    return Usage(
        input_tokens=as_int(usage.get("input_tokens")) + cache_write + cache_read,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=as_int(usage.get("output_tokens")),
        reasoning_tokens=as_int(nested(usage, "output_tokens_details", "thinking_tokens")),
        source="provider",
    )


def gemini_usage(metadata: dict[str, Any]) -> Usage:
    """Read a Gemini `usageMetadata` object.

    `cachedContentTokenCount` is part of `promptTokenCount`. Thinking tokens
    (`thoughtsTokenCount`) and tool-use prompt tokens are reported beside the prompt and
    candidates counts, so output is candidates + thoughts and input is prompt + tool-use prompt.
    """
    thoughts = as_int(metadata.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=as_int(metadata.get("promptTokenCount"))
        + as_int(metadata.get("toolUsePromptTokenCount")),
        cached_input_tokens=as_int(metadata.get("cachedContentTokenCount")),
        cache_write_tokens=0,
        output_tokens=as_int(metadata.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
        source="provider",
    )


def ollama_usage(obj: dict[str, Any]) -> Usage:
    """Read the counts of Ollama's native `/api/chat` and `/api/generate` replies."""
    return Usage(input_tokens=as_int(obj.get("prompt_eval_count")), cached_input_tokens=0,
                 cache_write_tokens=0, output_tokens=as_int(obj.get("eval_count")),
                 reasoning_tokens=0, source="provider")
