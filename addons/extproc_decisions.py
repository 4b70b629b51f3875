"""Results of the phases of an ext_proc session, as the gateway consumes them."""

from __future__ import annotations

import dataclasses

from addons.extproc_mutations import Header, ImmediateResponse


@dataclasses.dataclass(frozen=True)
class ResponseMode:
    """Response header, body and trailer modes in force after any mode_override."""

    header: str
    body: str
    trailer: str


@dataclasses.dataclass
class RequestDecision:
    """Result of the request phase: what to forward upstream, or the response to send instead."""

    headers: list[Header]
    path: str
    body: bytes | None
    immediate: ImmediateResponse | None
    outcome: str
    error: str | None
    latency_ms: float
    set_headers: dict[str, str]
    removed_headers: list[str]
    response_mode: ResponseMode


@dataclasses.dataclass
class HeaderDecision:
    """Result of the response-header phase."""

    headers: list[Header]
    status: int
    set_headers: dict[str, str]
    removed_headers: list[str]
    body: bytes | None = None
    immediate: ImmediateResponse | None = None
    outcome: str = "skipped"
    error: str | None = None
    latency_ms: float = 0.0


@dataclasses.dataclass
class BodyDecision:
    """Result of the buffered response-body phase; `body` is None when unchanged."""

    body: bytes | None
    headers: list[Header] | None
    set_headers: dict[str, str]
    removed_headers: list[str]
    immediate: ImmediateResponse | None = None
    outcome: str = "skipped"
    error: str | None = None
    latency_ms: float = 0.0
