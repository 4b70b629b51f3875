"""Record what a stand-in received and derive deterministic answers and token counts."""

from __future__ import annotations

import copy
import gzip
import json
import logging
import zlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)


@dataclass
class ReceivedRequest:
    """One HTTP request as a stand-in received it, in arrival order."""

    method: str
    path: str
    query: dict[str, str]
    headers: list[tuple[str, str]]
    body: bytes
    json: Any = None
    path_qs: str = ""

    def header(self, name: str) -> str | None:
        """Return the first value of header `name` (case-insensitive), or None."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_names(self) -> list[str]:
        """Return the header names exactly as the client spelled them."""
        return [key for key, _ in self.headers]


async def read_request(request: web.Request) -> ReceivedRequest:
    """Read the whole body of `request` and return it as a ReceivedRequest.

    The body is kept as sent. A gzip- or deflate-encoded body is decoded only for the
    `json` field, so a test can still check the bytes on the wire.
    """
    body = await request.read()
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
    return ReceivedRequest(
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers=headers,
        body=body,
        json=_parse_json(body, request.headers.get("Content-Encoding", "")),
        path_qs=request.path_qs,
    )


def _parse_json(body: bytes, encoding: str) -> Any:
    if not body:
        return None
    try:
        if encoding.lower() == "gzip":
            body = gzip.decompress(body)
        elif encoding.lower() == "deflate":
            body = zlib.decompress(body)
        return json.loads(body)
    except (ValueError, OSError, zlib.error):
        return None


def count_words(text: str) -> int:
    """Count whitespace-separated words: the stand-ins' stand-in for a tokenizer."""
    return len(text.split())


def collect_text(value: Any) -> list[str]:
    """Collect every string under the text-bearing keys of a request fragment, in order.

    Works for OpenAI messages (string or part lists), Anthropic content blocks, Gemini
    `contents[].parts[]` and Ollama messages alike, so prompt token counts are the number
    of words the user sent in each provider's format.
    """
    found: list[str] = []
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, list):
        for item in value:
            found.extend(collect_text(item))
    elif isinstance(value, dict):
        keys = ("text", "content", "input", "instructions", "system", "messages", "contents", "systemInstruction", "prompt")
        for key in keys:
            if key in value:
                found.extend(collect_text(value[key]))
        if "parts" in value:
            found.extend(collect_text(value["parts"]))
    return found


def deep_merge(base: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of `base` with `patch` merged in; nested dicts merge key by key."""
    merged = copy.deepcopy(base)
    for key, value in (patch or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def split_pieces(text: str, count: int | None) -> list[str]:
    """Split `text` into `count` stream pieces on word boundaries (one per word when None).

    Joining the pieces gives back `text` exactly. When `count` exceeds the number of words
    the extra pieces are empty strings, as a provider's keep-alive deltas would be.
    """
    words = text.split(" ")
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    if not count or count <= 0:
        return tokens
    pieces: list[str] = []
    for index in range(count):
        start = index * len(tokens) // count
        end = (index + 1) * len(tokens) // count
        pieces.append("".join(tokens[start:end]))
    return pieces


def sample_arguments(schema: dict[str, Any] | None) -> dict[str, Any]:
    """Build deterministic tool-call arguments that fit a JSON schema's top-level properties."""
    values: dict[str, Any] = {}
    properties = (schema or {}).get("properties") or {}
    for name, spec in properties.items():
        kind = str((spec or {}).get("type", "string")).lower()
        if "enum" in (spec or {}):
            values[name] = spec["enum"][0]
        elif kind in ("number", "integer"):
            values[name] = 1
        elif kind == "boolean":
            values[name] = True
        elif kind == "array":
            values[name] = []
        elif kind == "object":
            values[name] = {}
        else:
            values[name] = "stand-in"
    return values
