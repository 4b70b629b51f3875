"""The per-flow record that the gateway's addons share through `flow.metadata`.

Router, auth and costlog each write their part of one dict under `RECORD_KEY`, so costlog
never re-derives what the router decided. The dict holds only values that mitmproxy's
`FlowWriter` can store (dicts, lists, str, bytes, int, float, bool, None), because flows are
saved and loaded again for replay.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from typing import Any

from mitmproxy import http

RECORD_KEY = "meterway"
CLIENT_REQUEST_KEY = "meterway_client_request"


def new_request_id(now_ms: int | None = None) -> str:
    """Make a request id that sorts by time: 12 hex digits of epoch ms, then 12 random ones."""
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return f"{now_ms:012x}{secrets.token_hex(6)}"


def iso_utc(epoch_ms: int) -> str:
    """Format epoch milliseconds as UTC ISO-8601 with milliseconds and a `Z`."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def start(flow: http.HTTPFlow, bind: int | None) -> dict[str, Any]:
    """Create a fresh record for this flow and return it.

    A replayed flow arrives with the record of the request it copies; that record's id
    becomes `replay_of`, and everything else starts again.
    """
    previous = flow.metadata.get(RECORD_KEY)
    started_ms = int(flow.request.timestamp_start * 1000)
    record: dict[str, Any] = {
        "id": new_request_id(started_ms),
        "started_ms": started_ms,
        "started_at": iso_utc(started_ms),
        "bind": bind,
        "is_replay": 0,
        "replay_of": None,
        "router_outcome": "skipped",
        "outcome": None,
        "error": None,
    }
    if flow.is_replay == "request":
        record["is_replay"] = 1
        if isinstance(previous, dict):
            record["replay_of"] = previous.get("replay_of") or previous.get("id")
            # A replay runs as the client of the original request, by name only.
            record["replayed_client"] = previous.get("client")
    flow.metadata[RECORD_KEY] = record
    return record


def get(flow: http.HTTPFlow) -> dict[str, Any] | None:
    """Return the flow's record, or None for a flow the gateway did not start."""
    record = flow.metadata.get(RECORD_KEY)
    return record if isinstance(record, dict) else None


# The reverse-mode target the config addon gives every listener (addons/config.py).
_PLACEHOLDER = ("127.0.0.1", 9)


def snapshot_client_request(flow: http.HTTPFlow) -> None:
    """Keep the request as the client sent it, before the router changes anything.

    Reverse mode has already pointed the request, and its Host header, at the listeners'
    placeholder target; the snapshot names the listener the client connected to instead.
    """
    state = flow.request.get_state()
    sockname = flow.client_conn.sockname
    if (state["host"], state["port"]) == _PLACEHOLDER and sockname:
        host, port = sockname[0], sockname[1]
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        state["host"], state["port"], state["scheme"] = host, port, "http"
        state["headers"] = tuple(
            (name, authority.encode()) if name.lower() == b"host" else (name, value)
            for name, value in state["headers"]
        )
    flow.metadata[CLIENT_REQUEST_KEY] = state


def client_request(flow: http.HTTPFlow) -> http.Request | None:
    """Return the request as the client sent it, if a snapshot was taken."""
    state = flow.metadata.get(CLIENT_REQUEST_KEY)
    if not isinstance(state, dict):
        return None
    return http.Request.from_state(state)
