"""The routing step for one request body, apart from the gRPC protocol.

`RouterEngine.route_body` turns a request body into the header value and the rewritten body
that the ext_proc server sends back to the proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from meterway.router.classify import Decision, compile_routes, decide, extract_prompt, match_rules
from meterway.router.config import RouterConfig
from meterway.router.embeddings import EmbeddingClassifier

logger = logging.getLogger(__name__)

# Prompts longer than this (in characters) are matched against the rules in a worker thread.
LARGE_PROMPT_CHARS = 65536


@dataclass(frozen=True)
class BodyResult:
    """The outcome for one request body.

    `header_value` is the model for the routing header (None: set no header); `body` is the
    new body, or None when the body stays unchanged.
    """

    decision: Decision | None
    header_value: str | None
    body: bytes | None
    requested_model: str | None
    note: str


class RouterEngine:
    """Classifies request bodies with the config's rules, embedding classifier and default."""

    def __init__(self, config: RouterConfig, classifier: EmbeddingClassifier | None = None) -> None:
        self.config = config
        self.routes = compile_routes(config.routes)
        self.auto_models = set(config.auto_models)
        self.known_models = set(config.route_models())
        self.classifier = classifier
        if classifier is None and config.embeddings is not None:
            self.classifier = EmbeddingClassifier(config.embeddings, self.routes)
        if config.embeddings is None and any(route.examples for route in config.routes):
            logger.info("routes have `examples` but `embeddings:` is not configured, so the examples are unused")

    async def start(self) -> None:
        """Embed the route examples once; a failure only warns, and rules keep working."""
        if self.classifier is not None:
            await self.classifier.build()

    async def close(self) -> None:
        """Release the embeddings client."""
        if self.classifier is not None:
            await self.classifier.close()

    def models_listing(self) -> bytes:
        """Return the `GET /v1/models` body: the auto names, then the route models and the default."""
        names = list(dict.fromkeys([*self.config.auto_models, *self.config.route_models()]))
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "meterway-router"} for name in names]
        return json.dumps({"object": "list", "data": data}).encode()

    async def classify(self, body: dict[str, Any]) -> Decision | None:
        """Decide the route for a parsed body: rules, then embeddings, then the default."""
        text = extract_prompt(body)
        if text and len(text) > LARGE_PROMPT_CHARS:
            # Regexes over a long prompt take a while (about 0.3 s per pattern for 4.8 MB),
            # so a thread runs them and other streams keep being answered in between.
            by_rule = await asyncio.to_thread(match_rules, text, self.routes)
            if by_rule is not None:
                return by_rule
        elif text:
            by_rule = match_rules(text, self.routes)
            if by_rule is not None:
                return by_rule

        similarity = None
        if text and self.classifier is not None:
            similarity = await self.classifier.similarity(text)
        threshold = self.config.embeddings.threshold if self.config.embeddings else None
        return decide(None, self.routes, self.config.default, similarity, threshold)

    async def route_body(self, raw: bytes, path: str | None) -> BodyResult:
        """Classify a buffered request body and build the header value and the new body.

        Bodies that are not a JSON object, and explicit models the router does not know, pass
        unchanged: the gateway's own routes and aliases decide what happens to them.
        """
        started = time.perf_counter()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return BodyResult(None, None, None, None, "not a JSON object")

        requested = body.get("model") if isinstance(body.get("model"), str) else None
        changed = False

        if _is_embeddings(path) or (requested is not None and requested not in self.auto_models):
            # The client named a model, or the request is for embeddings, not generation:
            # no classification. A route model still gets the
            # header so the gateway's header routes apply; an unknown one passes untouched.
            decision = None
            header_value = requested if requested in self.known_models else None
            note = "explicit model" if header_value else "unknown model, passed unchanged"
        else:
            decision = await self.classify(body)
            header_value = decision.model if decision else None
            note = "classified" if decision else "no route and no default"
            if decision is not None and requested is not None and self.config.rewrite_model:
                body["model"] = decision.model
                changed = True

        if body.get("stream") is True and _accepts_stream_options(path, body):
            # Ask for the usage chunk so the gateway can log tokens for streams.
            options = body.get("stream_options")
            if not isinstance(options, dict):
                options = {}
            if options.get("include_usage") is not True:
                options["include_usage"] = True
                body["stream_options"] = options
                changed = True

        new_body = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() if changed else None
        self._log(decision, requested, header_value, new_body is not None, note, started)
        return BodyResult(decision, header_value, new_body, requested, note)

    def _log(self, decision: Decision | None, requested: str | None, header_value: str | None, changed: bool, note: str, started: float) -> None:
        # One line per request, without the prompt text: prompts are private data.
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.debug(
            "decision route=%s model=%s reason=%s requested=%s header=%s body_changed=%s (%s) in %.1f ms",
            decision.route if decision else None,
            decision.model if decision else None,
            decision.reason if decision else None,
            requested,
            header_value,
            changed,
            note,
            elapsed_ms,
        )


def _accepts_stream_options(path: str | None, body: dict[str, Any]) -> bool:
    """Tell whether the API takes `stream_options`: OpenAI chat and legacy completions do.

    Anthropic messages and the Responses API reject the field.
    """
    if path:
        bare = path.split("?", 1)[0].rstrip("/")
        return bare.endswith("/chat/completions") or bare.endswith("/v1/completions")
    # Without a path, only the chat shape qualifies, and Anthropic's `system` field rules it out.
    return isinstance(body.get("messages"), list) and "system" not in body


def _is_embeddings(path: str | None) -> bool:
    return bool(path) and path.split("?", 1)[0].rstrip("/").endswith("/embeddings")
