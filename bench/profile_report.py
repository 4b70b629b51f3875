"""Summarise a cProfile dump of the gateway: where each request's time goes.

Time is the profiler's own: cProfile cut meterway's throughput about fourfold on the
benchmark machine, so the shares matter more than the absolute microseconds.
"""

from __future__ import annotations

import pstats
from pathlib import Path

HOOKS = frozenset({"requestheaders", "request", "responseheaders", "response", "error", "client_connected",
                   "client_disconnected", "server_connect", "server_connected", "server_disconnected",
                   "tls_start_client", "tls_start_server", "next_layer", "http_connect", "running", "configure"})


# Functions where a thread sleeps: the event loop's select, and the log writer's queue wait.
# cProfile in Python 3.12 also records the writer thread, so these are kept out of the totals.
_IDLE_FILES = ("selectors.py", "threading.py", "queue.py")
_IDLE_BUILTINS = ("'poll' of 'select.epoll'", "'poll' of 'select.poll'", "'acquire' of '_thread.lock'", "'release' of '_thread.lock'")


def _is_idle(key: tuple[str, int, str]) -> bool:
    if key[0] == "~":
        return any(marker in key[2] for marker in _IDLE_BUILTINS)
    return key[0].endswith(_IDLE_FILES)


def _area(filename: str) -> str:
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:
        path = path.split("/site-packages/", 1)[1]
    elif "/addons/" in path and "/mitmproxy/" not in path:
        path = "addons/" + path.split("/addons/", 1)[1]
    if path.startswith("addons/"):
        return path.removesuffix(".py")
    if path.startswith("mitmproxy/addons/"):
        return "mitmproxy built-in addons"
    if path.startswith("mitmproxy/proxy/"):
        return "mitmproxy proxy layers"
    if path.startswith("mitmproxy/"):
        return "mitmproxy " + path.split("/")[1].removesuffix(".py")
    for name in ("grpc", "google/protobuf", "pydantic", "genai_prices", "tiktoken", "h11", "wsproto", "aioquic"):
        if path.startswith(name):
            return name
    if "/json/" in path:
        return "json"
    if "asyncio/" in path:
        return "asyncio"
    if path == "~":
        return "builtins (C)"
    return "other Python"


def _label(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    path = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{line}({name})"


def handled_requests(stats: dict) -> int:
    """Count the flows the gateway finished: the calls of costlog's `response` hook."""
    return sum(entry[1] for key, entry in stats.items()
               if key[2] == "response" and key[0].replace("\\", "/").endswith("addons/costlog.py"))


def summarize(stats_path: Path, requests: int | None = None, top: int = 20) -> dict:
    """Group the profile by area and list the top functions, in microseconds per request.

    Without `requests`, the count comes from the profile itself (warm-up requests included).
    """
    stats = pstats.Stats(str(stats_path)).stats  # type: ignore[attr-defined]
    if requests is None:
        requests = handled_requests(stats)
    per = 1e6 / max(1, requests)
    idle = sum(entry[2] for key, entry in stats.items() if _is_idle(key))
    busy = {key: entry for key, entry in stats.items() if not _is_idle(key)}
    total = sum(entry[2] for entry in busy.values())

    areas: dict[str, float] = {}
    for key, (_, _, tottime, _, _) in busy.items():
        name = "json" if key[0] == "~" and "json" in key[2] else _area(key[0])
        areas[name] = areas.get(name, 0.0) + tottime
    by_self = sorted(busy.items(), key=lambda item: item[1][2], reverse=True)[:top]

    hooks = []
    for key, (_, calls, _, cumtime, _) in stats.items():
        area = _area(key[0])
        if key[2] in HOOKS and (area.startswith("addons/") or area == "mitmproxy built-in addons"):
            hooks.append({"function": _label(key), "calls": calls, "us_per_request": cumtime * per})
    hooks.sort(key=lambda item: item["us_per_request"], reverse=True)

    dispatch = [entry for key, entry in stats.items() if key[2] == "invoke_addon" or key[2] == "invoke_addon_sync"]
    invoke_calls = sum(entry[1] for entry in dispatch)
    return {
        "requests": requests,
        "profiled_us_per_request": total * per,
        "idle_us_per_request": idle * per,
        "areas": sorted(({"area": k, "us_per_request": v * per, "share": v / total if total else 0}
                         for k, v in areas.items()), key=lambda item: item["us_per_request"], reverse=True),
        "top_self": [{"function": _label(key), "calls": entry[1], "us_per_request": entry[2] * per,
                      "share": entry[2] / total if total else 0} for key, entry in by_self],
        "hooks": hooks[:top],
        "addon_invocations_per_request": invoke_calls / max(1, requests),
    }
