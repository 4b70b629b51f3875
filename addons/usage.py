"""Read token usage from provider replies, whole or streamed, and estimate it when missing.

`UsageTracker(api, provider)` takes whole JSON bodies, SSE events or Ollama's NDJSON lines.
Each object is recognised by its shape, so a chat completions reply read from an Anthropic
backend is still read right. Usage fields are replaced by later values and never summed,
because every provider reports cumulative counts in a stream.

Where genai-prices has an extractor for the format (OpenAI chat, Responses and embeddings;
Anthropic Messages; Gemini `usageMetadata`) its result is used, checked against this
project's own reading in `addons/usage_model.py`. Gemini's OpenAI-compatible endpoint and
Ollama's native API are read here only: genai-prices 0.2.5 takes Gemini's `completion_tokens`
as all output, which leaves out the thinking tokens, and has no Ollama extractor.
"""

from __future__ import annotations

import logging
from typing import Any

from genai_prices import data_snapshot

from addons import tokens
from addons.bodies import parse_json
from addons.sse import SSEEvent
from addons.usage_model import (
    Usage,
    anthropic_usage,
    gemini_usage,
    ollama_usage,
    openai_chat_usage,
    openai_embeddings_usage,
    openai_responses_usage,
)
from addons.usage_text import CHARS_PER_TOKEN, as_dict, ReplyText, request_text

logger = logging.getLogger(__name__)

__all__ = ["API_NAMES", "PROVIDERS", "Usage", "UsageTracker", "request_text"]

API_NAMES = ("chat_completions", "responses", "messages", "embeddings", "generate_content",
             "models", "ollama_chat", "other")
PROVIDERS = ("openai", "anthropic", "gcp.gemini")

# genai-prices provider id and API flavor for each format it can extract.
_GENAI_EXTRACTORS = {
    "openai_chat": ("openai", "chat"),
    "openai_responses": ("openai", "responses"),
    "openai_embeddings": ("openai", "embeddings"),
    "anthropic": ("anthropic", "default"),
    "gemini": ("google", "default"),
}
_warned_mismatch: set[str] = set()


class UsageTracker:
    """Gather usage, model and output text of one reply for one API and provider."""

    def __init__(self, api: str, provider: str | None) -> None:
        self.api = api
        self.provider = provider
        self.reply = ReplyText()
        self.response_model: str | None = None
        self._format: str | None = None
        self._usage: dict[str, Any] | None = None
        self._streamed_responses_text = False

    def feed_json(self, obj: Any) -> None:
        """Read one whole JSON reply (a list is read item by item, as Gemini's array stream)."""
        if isinstance(obj, list):
            for item in obj:
                self.feed_json(item)
        elif isinstance(obj, dict):
            self._read(obj, event_name=None)

    def feed_event(self, event: SSEEvent) -> None:
        """Read one SSE event; events without a JSON object (`[DONE]`, comments) are skipped."""
        obj = event.json()
        if isinstance(obj, dict):
            self._read(obj, event_name=event.event)

    def feed_ndjson_line(self, line: bytes) -> None:
        """Read one line of Ollama's native NDJSON stream; blank or invalid lines are skipped."""
        obj = parse_json(line)
        if isinstance(obj, dict):
            self._read(obj, event_name=None)

    @property
    def text(self) -> str:
        """Output text collected so far."""
        return self.reply.text

    @property
    def tool_calls(self) -> list[tuple[str, str]]:
        """Tool calls collected so far, as (name, arguments) pairs."""
        return self.reply.tool_calls

    def result(self) -> Usage:
        """Return the reply's usage: `provider` when it reported any, else `none`."""
        if self._usage is None or self._format is None:
            return Usage(source="none", response_model=self.response_model)
        own = self._own_usage(self._format, self._usage)
        usage = own
        extractor = _GENAI_EXTRACTORS.get(self._format)
        if extractor is not None and not (self._format == "openai_chat" and self._gemini_compat):
            genai = _genai_usage(self._format, self._usage, *extractor)
            if genai is not None:
                if genai.counts() != own.counts() and self._format not in _warned_mismatch:
                    _warned_mismatch.add(self._format)
                    logger.warning("genai-prices reads %s usage as %s, meterway as %s; "
                                   "using genai-prices", self._format, genai.counts(),
                                   own.counts())
                usage = genai
        usage.response_model = self.response_model
        return usage

    def estimate(self, request_obj: Any, model: str | None) -> Usage:
        """Count prompt and output tokens with tiktoken, for replies without usage.

        NOTE: only text is counted, without the few tokens per message that chat formats add
        and without images or audio, so the estimate is low for short or multimodal chats.
        """
        input_tokens = tokens.count(request_text(request_obj), model)
        output_tokens = 0 if self.api == "embeddings" else tokens.count(
            self.reply.count_text(), model)
        # NOTE: text past the kept limit is counted by its length, an estimate of an estimate.
        output_tokens += self.reply.dropped_chars // CHARS_PER_TOKEN
        return Usage(input_tokens=input_tokens, output_tokens=output_tokens, source="estimated",
                     response_model=self.response_model)

    @property
    def _gemini_compat(self) -> bool:
        return self.provider == "gcp.gemini"

    def _own_usage(self, fmt: str, usage: dict[str, Any]) -> Usage:
        readers = {
            "openai_responses": openai_responses_usage,
            "openai_embeddings": openai_embeddings_usage,
            "anthropic": anthropic_usage,
            "gemini": gemini_usage,
            "ollama": ollama_usage,
        }
        if fmt == "openai_chat":
            return openai_chat_usage(usage, gemini_compat=self._gemini_compat)
        return readers[fmt](usage)

    def _set_usage(self, fmt: str, usage: Any, merge: bool = False) -> None:
        if not isinstance(usage, dict):
            return
        if merge and self._usage is not None and self._format == fmt:
            # Anthropic streams split usage over message_start and message_delta: each field
            # keeps its latest value.
            self._usage = {**self._usage, **{k: v for k, v in usage.items() if v is not None}}
        else:
            self._usage = dict(usage)
        self._format = fmt

    def _set_model(self, model: Any) -> None:
        if isinstance(model, str) and model:
            self.response_model = model.removeprefix("models/")

    def _read(self, obj: dict[str, Any], event_name: str | None) -> None:
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event_name or ""
        if kind.startswith(("message_", "content_block_")) or obj.get("type") == "message":
            self._read_anthropic(obj, kind)
        elif kind.startswith("response.") or obj.get("object") == "response":
            self._read_responses(obj, kind)
        elif "usageMetadata" in obj or "candidates" in obj or "modelVersion" in obj:
            self._set_model(obj.get("modelVersion"))
            self.reply.add_gemini_candidates(obj.get("candidates"))
            self._set_usage("gemini", obj.get("usageMetadata"))
        elif "eval_count" in obj or "prompt_eval_count" in obj or "done" in obj:
            self._read_ollama(obj)
        elif obj.get("object") == "list" and "data" in obj:
            self._set_model(obj.get("model"))
            self._set_usage("openai_embeddings", obj.get("usage"))
        else:
            self._read_openai_chat(obj)

    def _read_openai_chat(self, obj: dict[str, Any]) -> None:
        self._set_model(obj.get("model"))
        for position, choice in enumerate(obj.get("choices") or []):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", position)
            self.reply.add_openai_message(choice.get("message"), f"choice{index}")
            self.reply.add_openai_message(choice.get("delta"), f"choice{index}")
            self.reply.add_text(choice.get("text"))  # legacy completions
        self._set_usage("openai_chat", obj.get("usage"))

    def _read_responses(self, obj: dict[str, Any], kind: str) -> None:
        if kind == "response.output_text.delta" or kind == "response.reasoning_summary_text.delta":
            self.reply.add_text(obj.get("delta"))
            self._streamed_responses_text = True
        elif kind == "response.output_item.added":
            item = as_dict(obj.get("item"))
            if item.get("type") == "function_call":
                self.reply.add_tool(str(item.get("id")), item.get("name"))
        elif kind == "response.function_call_arguments.delta":
            self.reply.add_tool(str(obj.get("item_id")), arguments=obj.get("delta") or "")
            self._streamed_responses_text = True
        response = obj.get("response") if kind.startswith("response.") else obj
        if isinstance(response, dict):
            self._set_model(response.get("model"))
            if not self._streamed_responses_text and response.get("status") != "in_progress":
                self.reply.add_responses_output(response.get("output"))
            self._set_usage("openai_responses", response.get("usage"))

    def _read_anthropic(self, obj: dict[str, Any], kind: str) -> None:
        if kind == "message_start":
            message = as_dict(obj.get("message"))
            self._set_model(message.get("model"))
            self._set_usage("anthropic", message.get("usage"), merge=True)
        elif kind == "content_block_start":
            block = as_dict(obj.get("content_block"))
            if block.get("type") in ("tool_use", "server_tool_use"):
                self.reply.add_tool(f"block{obj.get('index')}", block.get("name"))
            else:
                self.reply.add_text(block.get("text"))
        elif kind == "content_block_delta":
            delta = as_dict(obj.get("delta"))
            self.reply.add_text(delta.get("text"))
            self.reply.add_text(delta.get("thinking"))
            if "partial_json" in delta:
                self.reply.add_tool(f"block{obj.get('index')}", arguments=delta["partial_json"])
        elif kind == "message_delta":
            self._set_usage("anthropic", obj.get("usage"), merge=True)
        elif obj.get("type") == "message":
            self._set_model(obj.get("model"))
            self.reply.add_anthropic_content(obj.get("content"))
            self._set_usage("anthropic", obj.get("usage"))

    def _read_ollama(self, obj: dict[str, Any]) -> None:
        self._set_model(obj.get("model"))
        message = obj.get("message")
        if isinstance(message, dict):
            self.reply.add_text(message.get("thinking"))
            self.reply.add_openai_message({"content": message.get("content"),
                                           "tool_calls": message.get("tool_calls")}, "ollama")
        self.reply.add_text(obj.get("thinking"))
        self.reply.add_text(obj.get("response"))
        if "eval_count" in obj or "prompt_eval_count" in obj:
            self._set_usage("ollama", obj)


def _genai_usage(fmt: str, usage: dict[str, Any], provider_id: str, flavor: str) -> Usage | None:
    """Extract usage with genai-prices' bundled extractors; None when it cannot."""
    root = "usageMetadata" if fmt == "gemini" else "usage"
    try:
        # The bundled snapshot only: the live price update is never started.
        provider = data_snapshot.get_snapshot().find_provider(None, provider_id, None)
        _, extracted = provider.extract_usage({root: usage}, api_flavor=flavor)
        values = {key: int(extracted.reported_value(key)) for key in (
            "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
            "output_reasoning_tokens")}
    except (LookupError, ValueError, TypeError) as error:
        logger.debug("genai-prices could not extract %s usage: %s", fmt, error)
        return None
    output = values["output_tokens"]
    if fmt == "openai_embeddings":
        output = 0
    return Usage(input_tokens=values["input_tokens"], cached_input_tokens=values["cache_read_tokens"],
                 cache_write_tokens=values["cache_write_tokens"], output_tokens=output,
                 reasoning_tokens=values["output_reasoning_tokens"], source="provider")


def usage_from_body(api: str, provider: str | None, body: Any) -> Usage:
    """Return the usage of one whole JSON reply body."""
    tracker = UsageTracker(api, provider)
    tracker.feed_json(body)
    return tracker.result()

