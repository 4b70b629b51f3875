"""Reading and rewriting the JSON body of an LLM API request."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http


class BadRequest(ValueError):
    """The client's request cannot be served; the message names the value and the fix."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def classify_api(path: str) -> str:
    """Name the API a request path belongs to, as the log's `api` column does."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return "chat_completions"
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/messages"):
        return "messages"
    if path.endswith("/embeddings"):
        return "embeddings"
    if ":generateContent" in path or ":streamGenerateContent" in path:
        return "generate_content"
    if path.endswith("/models") or "/models/" in path and ":" not in path:
        return "models"
    if path.endswith("/api/chat") or path.endswith("/api/generate"):
        return "ollama_chat"
    return "other"


def parse_json_body(request: http.Request) -> dict[str, Any] | None:
    """Parse the request body as a JSON object; None for an empty body.

    Raises BadRequest for a body that is not JSON or not an object, and for a `model`
    that is not a string.
    """
    raw = request.get_content(strict=False) or b""
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(
            f"request body is not valid UTF-8 (byte {err.start}); send the JSON body encoded as UTF-8"
        ) from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRequest(
            f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}; "
            "send a JSON object such as {\"model\": \"MoM\", \"messages\": [...]}"
        ) from None
    if not isinstance(body, dict):
        raise BadRequest(
            f"request body is a JSON {type(body).__name__}, not an object; send a JSON object "
            "such as {\"model\": \"MoM\", \"messages\": [...]}"
        )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(
            f"`model` must be a string, got {json.dumps(model)[:80]}; send for example \"model\": \"MoM\"",
            param="model",
        )
    return body


def write_json_body(request: http.Request, body: dict[str, Any]) -> None:
    """Replace the request body with `body` and keep content-length right."""
    request.headers.pop("content-encoding", None)
    request.content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def wants_stream(api: str, path: str, body: dict[str, Any] | None) -> bool:
    """Tell whether the client asked for a streamed response."""
    if ":streamGenerateContent" in path:
        return True
    if body is None:
        return False
    if api == "ollama_chat":
        return body.get("stream", True) is not False  # Ollama streams unless the body sets "stream": false
    return body.get("stream") is True


def client_asked_for_usage(body: dict[str, Any] | None) -> bool:
    """Tell whether the client itself asked for `stream_options.include_usage: true`.

    A client that sent `false` or nothing gets the option turned on upstream and the usage
    event removed again, so the log has the provider's counts and the client sees what it
    asked for.
    """
    if not body:
        return False
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
