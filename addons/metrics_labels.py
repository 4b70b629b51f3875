"""Bounded model label values for the Prometheus metrics.

Clients choose the model names they send, so one client could create a new time series per
request. Names the config knows (aliases, alias targets, `llm.models[]`, catalog models) are
always kept; of the others, the first `cap` distinct names are kept and the rest report as
`other`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from addons.config_policies import AiPolicy

logger = logging.getLogger(__name__)

OTHER = "other"
DEFAULT_UNKNOWN_CAP = 50


def _models_in_catalog(document: Any) -> set[str]:
    names: set[str] = set()
    providers = document.get("providers") if isinstance(document, dict) else None
    for provider in (providers or {}).values():
        models = provider.get("models") if isinstance(provider, dict) else None
        names.update(str(name) for name in (models or {}))
    return names


def _ai_policies(model: BaseModel) -> list[AiPolicy]:
    found: list[AiPolicy] = []
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, AiPolicy):
                found.append(item)
            elif isinstance(item, BaseModel):
                found.extend(_ai_policies(item))
    return found


def known_models(gateway: Any) -> set[str]:
    """Collect the model names a gateway config mentions, wildcard patterns included."""
    names: set[str] = set()
    for policy in _ai_policies(gateway):
        for alias, target in policy.model_aliases.items():
            names.update((alias, target))
    llm = getattr(gateway, "llm", None)
    for entry in getattr(llm, "models", None) or ():
        names.add(entry.name)
        if entry.params.model:
            names.add(entry.params.model)
    section = getattr(gateway, "config", None)
    for entry in getattr(section, "model_catalog", None) or ():
        if entry.inline is not None:
            names.update(_models_in_catalog(entry.inline))
        elif entry.file is not None:
            path = Path(gateway.resolve_path(entry.file))
            try:
                names.update(_models_in_catalog(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError) as error:
                # The pricing addon reports a broken catalog; here it only costs label names.
                logger.debug("model catalog %s not read for metric labels: %s", path, error)
    names.discard("")
    return names


class ModelLabels:
    """Map model names to label values, keeping the set of values bounded."""

    def __init__(self, known: set[str] = frozenset(), cap: int = DEFAULT_UNKNOWN_CAP) -> None:
        self.cap = cap
        self._unknown: set[str] = set()
        self.set_known(known)

    def set_known(self, known: set[str]) -> None:
        """Replace the names the config knows; unknown names seen so far stay counted.

        Wildcard names (`gpt-*`, `*`) are left out: a pattern would let clients create
        unbounded label values again.
        """
        self._known = {name for name in known if "*" not in name}

    def label(self, model: Any) -> str:
        """Return the label value for `model`: the name itself, `` for none, or `other`."""
        if model is None or model == "":
            return ""
        name = str(model)
        if name in self._known or name in self._unknown:
            return name
        if len(self._unknown) < self.cap:
            self._unknown.add(name)
            return name
        return OTHER
