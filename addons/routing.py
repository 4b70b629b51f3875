"""Route selection and model aliases, as agentgateway does them.

Route selection ranks every (route, match) pair that fits the request instead of taking the
first listed route: an exact path beats any prefix, a longer prefix beats a shorter one, a
method match beats none, and more header matches beat fewer, then more query matches. Ties
keep the listed order. A route without `matches` fits every request as a `/` prefix, so it
is the fallback.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class RequestFacts:
    method: str
    path: str  # without the query string
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str]


@dataclass(frozen=True)
class RouteChoice:
    route: Any  # the config model's Route
    index: int  # position in the listener's routes


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _string_matches(matcher: Any, value: str | None) -> bool:
    if value is None:
        return False
    exact = getattr(matcher, "exact", None)
    if exact is not None:
        return value == exact
    regex = getattr(matcher, "regex", None)
    if regex is not None:
        return _compiled(regex).fullmatch(value) is not None
    return False


def _path_rank(path_match: Any, path: str) -> tuple[int, int] | None:
    """Return (is_exact, prefix length) when the path fits, else None."""
    if path_match is None:
        return (0, 1)  # an absent path match is a `/` prefix
    if path_match.exact is not None:
        return (1, len(path_match.exact)) if path == path_match.exact else None
    if path_match.path_prefix is not None:
        prefix = path_match.path_prefix.rstrip("/")
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return (0, len(path_match.path_prefix))
        return None
    if path_match.regex is not None:
        if _compiled(path_match.regex).fullmatch(path):
            # NOTE: agentgateway leaves regex precedence to the implementation; meterway
            # ranks a regex like a prefix as long as the pattern.
            return (0, len(path_match.regex))
        return None
    return (0, 1)


def match_rank(match: Any, facts: RequestFacts) -> tuple[int, int, int, int, int] | None:
    """Rank one `matches[]` entry against a request, or return None when it does not fit."""
    path_rank = _path_rank(match.path, facts.path)
    if path_rank is None:
        return None
    method = match.method
    if method and method.upper() != facts.method.upper():
        return None
    for header in match.headers or ():
        if not _string_matches(header.value, facts.headers.get(header.name.lower())):
            return None
    for query in match.query or ():
        if not _string_matches(query.value, facts.query.get(query.name)):
            return None
    return (
        path_rank[0],
        path_rank[1],
        1 if method else 0,
        len(match.headers or ()),
        len(match.query or ()),
    )


def select_route(routes: Sequence[Any], facts: RequestFacts) -> RouteChoice | None:
    """Pick the best route for a request, or None when no route fits."""
    best: tuple[tuple[int, ...], int] | None = None
    for index, route in enumerate(routes):
        matches = route.matches or ()
        ranks: Iterable[tuple[int, ...] | None]
        if not matches:
            ranks = [(0, 1, 0, 0, 0)]
        else:
            ranks = (match_rank(m, facts) for m in matches)
        for rank in ranks:
            if rank is None:
                continue
            # Higher rank wins; on a tie the earlier route (lower index) wins.
            key = (rank, -index)
            if best is None or key > (best[0], -best[1]):
                best = (rank, index)
    if best is None:
        return None
    return RouteChoice(routes[best[1]], best[1])


def apply_model_alias(aliases: Mapping[str, str] | None, model: str | None) -> str | None:
    """Return the model that `modelAliases` maps `model` to, or `model` unchanged.

    An exact key wins; otherwise the wildcard pattern with the most literal characters wins,
    so `gpt-4o-*` beats `gpt-*` and `*`.
    """
    if not aliases or model is None:
        return model
    if model in aliases:
        return aliases[model]
    best: tuple[int, str] | None = None
    for pattern, target in aliases.items():
        if "*" not in pattern:
            continue
        if fnmatch.fnmatchcase(model, pattern):
            literal = len(pattern.replace("*", ""))
            if best is None or literal > best[0]:
                best = (literal, target)
    return best[1] if best else model


def route_name(route: Any, bind: int, listener_index: int, route_index: int, backend_name: str | None) -> str:
    """Name a route: its own `name`, else bind, listener and position plus its backend's name."""
    if getattr(route, "name", None):
        return str(route.name)
    suffix = f"/{backend_name}" if backend_name else ""
    return f"{bind}/{listener_index}/{route_index}{suffix}"
