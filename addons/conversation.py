"""The text of a prompt, for the full-text index."""

from __future__ import annotations

from typing import Any


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text") or part.get("input_text") or part.get("content")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return ""


def prompt_text(body: Any) -> str:
    """Join the text of a request's messages (OpenAI, Anthropic, Responses, Gemini, Ollama)."""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    system = body.get("system")
    if system:
        parts.append(_content_text(system))
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            parts.append(_content_text(message.get("content")))
    value = body.get("input")
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                parts.append(_content_text(item.get("content")))
            elif isinstance(item, str):
                parts.append(item)
    for content in body.get("contents") or ():
        if isinstance(content, dict):
            parts.append(_content_text(content.get("parts")))
    if isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
    return "\n".join(p for p in parts if p)
