"""Names from the OpenTelemetry GenAI semantic conventions, shared by metrics and tracing.

The request log's `api` column maps onto `gen_ai.operation.name`; its `provider` column
already holds the provider ids the conventions use (`openai`, `gcp.gemini`, `anthropic`).
"""

from __future__ import annotations

from typing import Any

# `gen_ai.operation.name` for each value of the `api` column; anything else keeps its name.
OPERATION_NAMES = {
    "chat_completions": "chat",
    "responses": "chat",
    "messages": "chat",
    "ollama_chat": "chat",
    "embeddings": "embeddings",
    "generate_content": "generate_content",
}

# `gen_ai.token.type` of the token usage histogram, and the row column each one counts.
TOKEN_TYPES = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("input_cache_read", "cached_input_tokens"),
    ("input_cache_write", "cache_write_tokens"),
)


def operation_name(row: dict[str, Any]) -> str:
    """Return `gen_ai.operation.name` for a request log row."""
    api = row.get("api") or "other"
    return OPERATION_NAMES.get(api, api)


def text(value: Any) -> str:
    """Return a label value: the empty string for NULL, else the value as text."""
    return "" if value is None else str(value)
