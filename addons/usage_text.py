"""Collect the output text and tool calls of a reply, and the prompt text of a request.

The text serves two readers: the full-text index of the request log, and the tiktoken
estimate when a provider returned no usage.
"""

from __future__ import annotations

import json
from typing import Any

# Keys whose string values are prompt text in the request formats meterway serves.
_TEXT_KEYS = frozenset({"content", "text", "input", "prompt", "system", "instructions",
                        "arguments", "output", "query"})
# Keys that hold binary payloads (base64 images, audio, files): never counted as text.
_BINARY_KEYS = frozenset({"inlineData", "inline_data", "image_url", "input_audio", "source",
                          "file_data", "fileData", "image", "images", "audio", "file"})
_TOOL_KEYS = ("tools", "functions", "functionDeclarations")


def request_text(request: Any) -> str:
    """Return the prompt text of a request body in any supported format, one part per line.

    A string counts when the nearest key above it names text (`content`, `text`, `input`,
    ...). Tool definitions are included as JSON, because providers bill them as input.
    """
    parts: list[str] = []
    if isinstance(request, dict):
        for key in _TOOL_KEYS:
            if request.get(key):
                parts.append(json.dumps(request[key], ensure_ascii=False))
    _walk(request, parts, key=None)
    return "\n".join(p for p in parts if p)


def _walk(value: Any, parts: list[str], key: str | None) -> None:
    if isinstance(value, str):
        if key in _TEXT_KEYS:
            parts.append(value)
    elif isinstance(value, list):
        for item in value:
            _walk(item, parts, key)
    elif isinstance(value, dict):
        for child_key, item in value.items():
            if child_key not in _BINARY_KEYS and child_key not in _TOOL_KEYS:
                _walk(item, parts, child_key)


# Output text kept per reply. Beyond it only the character count grows, so a 100 MB stream
# does not grow the gateway's memory with it.
MAX_TEXT_CHARS = 1_000_000
# Characters per token assumed for text past MAX_TEXT_CHARS (an estimate for English prose).
CHARS_PER_TOKEN = 4


class ReplyText:
    """Output text and tool calls gathered from whole bodies and stream events."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._kept_chars = 0
        self.dropped_chars = 0
        # Tool calls by a key that stays stable across stream events: name and argument parts.
        self._tools: dict[str, tuple[list[str], list[str]]] = {}
        self._order: list[str] = []

    def add_text(self, text: Any) -> None:
        """Append output text; ignore anything that is not a non-empty string."""
        if not isinstance(text, str) or not text:
            return
        room = MAX_TEXT_CHARS - self._kept_chars
        if room <= 0:
            self.dropped_chars += len(text)
            return
        kept = text[:room]
        self._text.append(kept)
        self._kept_chars += len(kept)
        self.dropped_chars += len(text) - len(kept)

    def add_tool(self, key: str, name: Any = None, arguments: Any = None) -> None:
        """Add a tool call's name or a piece of its arguments under a stable key."""
        if key not in self._tools:
            self._tools[key] = ([], [])
            self._order.append(key)
        names, args = self._tools[key]
        if isinstance(name, str) and name:
            names.append(name)
        if isinstance(arguments, str):
            args.append(arguments)
        elif arguments is not None:
            args.append(json.dumps(arguments, ensure_ascii=False))

    @property
    def text(self) -> str:
        """The output text in arrival order, up to MAX_TEXT_CHARS characters."""
        return "".join(self._text)

    @property
    def tool_calls(self) -> list[tuple[str, str]]:
        """Tool calls as (name, arguments) pairs in the order they started."""
        return [("".join(self._tools[k][0]), "".join(self._tools[k][1])) for k in self._order]

    def is_empty(self) -> bool:
        """True when nothing was collected."""
        return not self._text and not self._tools

    def count_text(self) -> str:
        """Return the output text plus tool names and arguments, the text an estimate counts."""
        pieces = [self.text] + [f"{name} {args}" for name, args in self.tool_calls]
        return "\n".join(p for p in pieces if p)

    def add_openai_message(self, message: Any, prefix: str) -> None:
        """Collect a chat completions `message` or streamed `delta`."""
        if not isinstance(message, dict):
            return
        for key in ("reasoning_content", "reasoning", "content"):
            content = message.get(key)
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, dict):
                        self.add_text(part.get("text"))
            else:
                self.add_text(content)
        for position, call in enumerate(_as_list(message.get("tool_calls"))):
            if not isinstance(call, dict):
                continue
            function = as_dict(call.get("function"))
            index = call.get("index", position)
            self.add_tool(f"{prefix}:{index}", function.get("name"), function.get("arguments"))

    def add_responses_output(self, output: Any) -> None:
        """Collect the `output` items of a finished Responses API object."""
        for position, item in enumerate(output if isinstance(output, list) else []):
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call":
                self.add_tool(str(item.get("id") or position), item.get("name"),
                              item.get("arguments"))
                continue
            for block in _as_list(item.get("content")) + _as_list(item.get("summary")):
                if isinstance(block, dict):
                    self.add_text(block.get("text"))

    def add_anthropic_content(self, content: Any) -> None:
        """Collect the `content` blocks of a whole Anthropic message."""
        for index, block in enumerate(content if isinstance(content, list) else []):
            if not isinstance(block, dict):
                continue
            if block.get("type") in ("tool_use", "server_tool_use"):
                self.add_tool(str(index), block.get("name"), block.get("input"))
            else:
                self.add_text(block.get("text"))
                self.add_text(block.get("thinking"))

    def add_gemini_candidates(self, candidates: Any) -> None:
        """Collect the parts of Gemini `candidates`; each streamed function call arrives whole."""
        for candidate in candidates if isinstance(candidates, list) else []:
            parts = _as_list(as_dict(as_dict(candidate).get("content")).get("parts"))
            for part in parts:
                if not isinstance(part, dict):
                    continue
                self.add_text(part.get("text"))
                call = part.get("functionCall")
                if isinstance(call, dict):
                    self.add_tool(f"gemini:{len(self._order)}", call.get("name"), call.get("args"))


def as_dict(value: Any) -> dict[str, Any]:
    """Return `value` if it is a JSON object, else an empty one: provider replies vary in shape."""
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list[Any]:
    """Return `value` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []
