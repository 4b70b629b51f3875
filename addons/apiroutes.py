"""Which API a request belongs to: agentgateway's `policies.ai.routes`, else the path.

`ai.routes` maps a path suffix (or `*`) to a route type; the longest matching suffix wins.
Without it meterway classifies by path, which also recognises the native Gemini, Anthropic
and Ollama paths. agentgateway instead parses every request as chat completions then; the
difference only adds APIs that agentgateway would not have recognised.
"""

from __future__ import annotations

from collections.abc import Mapping

from addons.requestbody import classify_api

ROUTE_TYPE_API = {
    "completions": "chat_completions",
    "messages": "messages",
    "models": "models",
    "responses": "responses",
    "embeddings": "embeddings",
    "anthropicTokenCount": "other",
    "passthrough": "other",
    "realtime": "other",
}


def api_for(path: str, routes: Mapping[str, str] | None) -> str:
    """Return the `api` column value for a request path under a route's `ai.routes`."""
    if not routes:
        return classify_api(path)
    bare = path.split("?", 1)[0]
    best: tuple[int, str] | None = None
    for suffix, route_type in routes.items():
        if suffix == "*" or bare.endswith(suffix):
            length = -1 if suffix == "*" else len(suffix)
            if best is None or length > best[0]:
                best = (length, route_type)
    if best is None:
        return classify_api(path)
    if best[1] == "detect":
        return classify_api(path)
    return ROUTE_TYPE_API.get(best[1], "other")


def gemini_model_from_path(path: str) -> str | None:
    """Return NAME from a native Gemini path such as /v1beta/models/NAME:generateContent."""
    bare = path.split("?", 1)[0]
    marker = "/models/"
    if marker not in bare or ":" not in bare:
        return None
    name = bare.split(marker, 1)[1].split(":", 1)[0]
    return name or None
