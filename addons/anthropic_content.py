"""Translate OpenAI chat messages and content parts into Anthropic turns and content blocks.

`translate_messages()` is the `messages` half of `addons.anthropic_translate.chat_to_messages`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

_IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


class TranslationError(ValueError):
    """A chat completions request that cannot be expressed as an Anthropic Messages request.

    The message names the field, the value and what the client can send instead. The gateway
    returns it to the client as a 400 in the OpenAI error format.
    """


def translate_messages(messages: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """Split OpenAI messages into Anthropic's top-level system text and its turns."""
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty list of chat messages")

    system_parts: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TranslationError(f"messages[{index}] must be an object, got {message!r}")
        role = message.get("role")
        # NOTE: Anthropic has one system prompt, so a system message in the middle of the
        # conversation moves to the front, joined with the others in their order.
        if role in ("system", "developer"):
            system_parts.append(_plain_text(message.get("content"), f"messages[{index}]"))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), index)
        elif role == "assistant":
            blocks = _assistant_blocks(message, index)
        elif role == "tool":
            blocks = [_tool_result(message, index)]
            role = "user"
        else:
            raise TranslationError(
                f"messages[{index}] has role {role!r}; use system, developer, user, assistant or tool"
            )
        if not blocks:
            raise TranslationError(
                f"messages[{index}] ({role}) has no content; Anthropic rejects empty messages, "
                "so remove it or give it text"
            )
        # Anthropic joins consecutive turns of one role anyway. Merging them here keeps the
        # tool_result blocks of parallel tool calls in one user turn, ahead of any text.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    system = "\n\n".join(part for part in system_parts if part)
    return system or None, turns


def _plain_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise TranslationError(f"{where} may hold only text parts here, got a {kind!r} part")
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise TranslationError(f"{where}.content must be a string or a list of parts, got {content!r}")


def _user_blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(
            f"messages[{index}].content must be a string or a list of parts, got {content!r}"
        )
    blocks = []
    for part_index, part in enumerate(content):
        where = f"messages[{index}].content[{part_index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append(_image_block(url, where))
        elif kind == "file":
            blocks.append(_file_block(part.get("file"), where))
        else:
            raise TranslationError(
                f"{where} has type {kind!r}, which Anthropic cannot take; send text, image_url "
                "or a PDF file part"
            )
    return blocks


def _parse_data_url(url: str, where: str) -> tuple[str, str]:
    """Return (media type, base64 data) of a `data:TYPE;base64,DATA` URL."""
    header, comma, data = url.partition(",")
    media_type, _, encoding = header.removeprefix("data:").partition(";")
    if not comma or encoding != "base64":
        raise TranslationError(
            f"{where} has a data URL that is not base64-encoded ({header!r}); "
            "send data:MEDIA_TYPE;base64,DATA"
        )
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TranslationError(f"{where} has a data URL whose data is not valid base64") from None
    return media_type.lower(), data


def _image_block(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{where}.image_url.url must be a URL string, got {url!r}")
    if url.startswith("data:"):
        media_type, data = _parse_data_url(url, where)
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise TranslationError(
                f"{where} is an image of type {media_type!r}; Anthropic takes "
                f"{', '.join(_IMAGE_MEDIA_TYPES)}"
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{where} has image URL {url[:40]!r}; send an http(s) URL or a data URL")


def _file_block(file: Any, where: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise TranslationError(
            f"{where} is a file part without inline file_data; uploaded file ids cannot reach "
            "Anthropic, so send the PDF as file_data (a base64 data URL)"
        )
    media_type, data = _parse_data_url(data_url, where)
    if media_type != "application/pdf":
        raise TranslationError(f"{where} is a file of type {media_type!r}; Anthropic takes application/pdf")
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(message: dict[str, Any], index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _plain_text(message.get("content"), f"messages[{index}]")
    if text:
        blocks.append({"type": "text", "text": text})
    for call_index, call in enumerate(message.get("tool_calls") or []):
        where = f"messages[{index}].tool_calls[{call_index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name") or not call.get("id"):
            raise TranslationError(f"{where} needs an id and a function with a name, got {call!r}")
        blocks.append({
            "type": "tool_use",
            "id": call["id"],
            "name": function["name"],
            "input": _parse_arguments(function.get("arguments"), where),
        })
    return blocks


def _parse_arguments(arguments: Any, where: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        raise TranslationError(
            f"{where}.function.arguments is not valid JSON ({str(arguments)[:80]!r}); "
            "Anthropic needs the tool input as a JSON object"
        ) from None
    if not isinstance(parsed, dict):
        raise TranslationError(
            f"{where}.function.arguments must encode a JSON object, got {type(parsed).__name__}"
        )
    return parsed


def _tool_result(message: dict[str, Any], index: int) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not tool_call_id:
        raise TranslationError(f"messages[{index}] (tool) needs the tool_call_id of the tool call it responds to")
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    if isinstance(content, list):
        blocks = [
            {"type": "text", "text": part["text"]}
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and part.get("text")
        ]
        if blocks:
            result["content"] = blocks
    elif content:
        result["content"] = str(content)
    return result
