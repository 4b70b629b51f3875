"""The `llm:` listener: requests routed by the model name the client asks for.

Each `llm.models[]` entry matches a requested model by name (`*` may start or end the name)
and forwards it to its provider. Without `params.model` the client's model goes upstream
unchanged; without `params.apiKey` the key comes from the provider's usual environment
variable, as agentgateway does.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# llm provider ids -> the `ai` backend provider kind and its key variable.
_PROVIDERS: dict[str, tuple[str, str | None, str | None]] = {
    "openai": ("openAI", "OPENAI_API_KEY", None),
    "gemini": ("gemini", "GEMINI_API_KEY", None),
    "anthropic": ("anthropic", "ANTHROPIC_API_KEY", None),
    "ollama": ("openAI", None, "localhost:11434"),
}


class LlmRouteError(LookupError):
    """No `llm.models[]` entry serves the requested model."""


@dataclass(frozen=True)
class LlmTarget:
    name: str
    provider_kind: str
    model: str | None
    key: str | None
    host_override: str | None


def _matches(pattern: str, model: str) -> bool:
    return fnmatch.fnmatchcase(model, pattern) if "*" in pattern else model == pattern


def resolve_llm_model(llm: Any, requested: str | None, env_keys: dict[str, str]) -> LlmTarget:
    """Find the `llm.models[]` entry for a requested model.

    Raises LlmRouteError naming the model and the names that are served.
    """
    names = [entry.name for entry in llm.models]
    if not requested:
        raise LlmRouteError(
            "the request has no `model`; the llm listener routes by model name, "
            f"send one of: {', '.join(names) or '(none configured)'}"
        )
    for entry in llm.models:
        if not _matches(entry.name, requested):
            continue
        provider_id = entry.provider if isinstance(entry.provider, str) else "custom"
        if provider_id not in _PROVIDERS:
            raise LlmRouteError(
                f"llm model {entry.name!r} uses provider {provider_id!r}, which meterway does not "
                f"serve yet; use one of {', '.join(sorted(_PROVIDERS))}"
            )
        kind, key_variable, default_host = _PROVIDERS[provider_id]
        params = entry.params
        key = params.api_key if isinstance(params.api_key, str) else None
        if key is None and key_variable:
            key = env_keys.get(key_variable)
        host = params.host_override or default_host
        if params.base_url:
            parts = urlsplit(params.base_url)
            host = parts.netloc or host
        return LlmTarget(entry.name, kind, params.model, key, host)
    raise LlmRouteError(
        f"model {requested!r} is not served on the llm listener; send one of: "
        f"{', '.join(names) or '(none configured)'}, or add it to llm.models"
    )


def served_models(gateway: Any, listener: Any) -> list[tuple[str, str]]:
    """List (model id, owner) pairs that a listener serves, for `GET /v1/models`."""
    seen: dict[str, str] = {}
    if listener.kind == "llm":
        for entry in gateway.llm.models:
            if "*" not in entry.name:
                seen.setdefault(entry.name, entry.provider if isinstance(entry.provider, str) else "custom")
        return list(seen.items())
    for config_listener in listener.bind.listeners:
        for route in config_listener.routes:
            for backend in route.backends:
                ai = backend.ai
                if ai is None:
                    continue
                owner = ai.name or ai.provider_kind
                for policies in (route.policies, ai.policies, backend.policies):
                    ai_policy = getattr(policies, "ai", None)
                    for alias, target in (getattr(ai_policy, "model_aliases", None) or {}).items():
                        if "*" not in alias:
                            seen.setdefault(alias, "meterway")
                        seen.setdefault(target, owner)
                if ai.provider.settings.model:
                    seen.setdefault(ai.provider.settings.model, owner)
    return list(seen.items())
