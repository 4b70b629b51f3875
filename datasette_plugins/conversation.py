"""Turn stored request and response bodies into chat messages for the request page.

Reads OpenAI chat completions and responses, Anthropic messages and Gemini contents, and
rebuilds a streamed answer from its SSE events. Everything returned is plain text; the
template escapes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Message:
    """One chat bubble: a role, its text, and the tool calls it made."""

    role: str
    text: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _text_of(content: Any) -> str:
    """Flatten a content value (string, list of parts or blocks) into text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return json.dumps(content)
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict):
            if "text" in part:
                parts.append(str(part["text"]))
            elif part.get("type") == "tool_result":
                parts.append(_text_of(part.get("content")))
            elif part.get("type") in ("image_url", "input_image", "image"):
                parts.append("[image]")
    return "\n".join(p for p in parts if p)


def _tool_calls(message: dict[str, Any]) -> list[tuple[str, str]]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        calls.append((str(function.get("name", "")), str(function.get("arguments", ""))))
    for block in message.get("content") if isinstance(message.get("content"), list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            calls.append((str(block.get("name", "")), json.dumps(block.get("input"))))
    for part in message.get("parts") or []:
        if isinstance(part, dict) and "functionCall" in part:
            call = part["functionCall"]
            calls.append((str(call.get("name", "")), json.dumps(call.get("args"))))
    return calls


def _message(raw: Any) -> Message | None:
    if not isinstance(raw, dict):
        return None
    role = str(raw.get("role") or "user")
    if role == "model":
        role = "assistant"
    if isinstance(raw.get("content"), list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in raw["content"]):
        role = "tool"
    text = _text_of(raw.get("content") if "content" in raw else raw.get("parts"))
    return Message(role, text, _tool_calls(raw))


def request_messages(body: str | None) -> list[Message]:
    """Read the prompt's messages from a request body of any supported API."""
    data = _json(body)
    if not isinstance(data, dict):
        return []
    messages: list[Message] = []
    system = data.get("system") or data.get("instructions")
    if system:
        messages.append(Message("system", _text_of(system)))
    if isinstance(data.get("systemInstruction"), dict):
        messages.append(Message("system", _text_of(data["systemInstruction"].get("parts"))))
    raw_list = data.get("messages") or data.get("contents") or data.get("input") or []
    if isinstance(raw_list, str):
        return messages + [Message("user", raw_list)]
    for raw in raw_list:
        message = _message(raw)
        if message:
            messages.append(message)
    return messages


def _sse_payloads(body: str) -> list[Any]:
    events = []
    for line in body.splitlines():
        if line.startswith("data:"):
            payload = _json(line[5:].strip())
            if payload is not None:
                events.append(payload)
    return events


def _from_stream(events: list[Any]) -> Message:
    text, calls = [], {}
    for event in events:
        if not isinstance(event, dict):
            continue
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call.get("index", 0), ["", ""])
                function = call.get("function") or {}
                slot[0] += function.get("name") or ""
                slot[1] += function.get("arguments") or ""
        delta = event.get("delta") or {}
        if event.get("type") == "content_block_delta":
            text.append(delta.get("text") or delta.get("partial_json") or "")
        if event.get("type") == "response.output_text.delta":
            text.append(str(event.get("delta") or ""))
        for candidate in event.get("candidates") or []:
            text.append(_text_of((candidate.get("content") or {}).get("parts")))
    return Message("assistant", "".join(text), [tuple(v) for v in calls.values()])


def response_messages(body: str | None) -> list[Message]:
    """Read the answer's messages from a JSON response body or its SSE events."""
    if not body:
        return []
    data = _json(body)
    if data is None:
        events = _sse_payloads(body)
        return [_from_stream(events)] if events else []
    if not isinstance(data, dict):
        return []
    found = []
    for choice in data.get("choices") or []:
        message = _message(choice.get("message"))
        if message:
            found.append(message)
    if data.get("type") == "message" or (data.get("role") == "assistant" and "content" in data):
        found.append(Message("assistant", _text_of(data.get("content")), _tool_calls(data)))
    for item in data.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            found.append(Message("assistant", _text_of(item.get("content"))))
        elif isinstance(item, dict) and item.get("type") == "function_call":
            found.append(Message("assistant", "", [(str(item.get("name")),
                                                    str(item.get("arguments")))]))
    for candidate in data.get("candidates") or []:
        found.append(_message(candidate.get("content") or {}) or Message("assistant"))
    if "error" in data and not found:
        found.append(Message("error", json.dumps(data["error"], indent=2)))
    return found


def pretty_json(text: str | None) -> str:
    """Indent a JSON text for reading; return other text unchanged."""
    data = _json(text)
    return json.dumps(data, indent=2, ensure_ascii=False) if data is not None else (text or "")
