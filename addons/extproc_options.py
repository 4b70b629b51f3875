"""Processing options of an ext_proc policy, in agentgateway's names and values.

agentgateway's YAML names the modes in camelCase (`requestBodyMode: buffered`); Envoy's
proto uses enums (`BUFFERED`). This module converts between the two, applies a router's
`mode_override`, and lists the option combinations the gateway cannot honour.

Defaults follow agentgateway's documentation: headers and trailers `send`, bodies
`fullDuplexStreamed`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

_Mode = processing_mode_pb2.ProcessingMode

HEADER_MODES = ("send", "skip")
BODY_MODES = ("none", "buffered", "bufferedPartial", "fullDuplexStreamed")
# `streamed` is Envoy's STREAMED mode. agentgateway has no YAML value for it, but a router
# may switch to it with mode_override (vLLM Semantic Router does for SSE responses).
OVERRIDE_BODY_MODES = BODY_MODES + ("streamed",)

BODY_MODE_TO_ENUM = {
    "none": _Mode.NONE,
    "streamed": _Mode.STREAMED,
    "buffered": _Mode.BUFFERED,
    "bufferedPartial": _Mode.BUFFERED_PARTIAL,
    "fullDuplexStreamed": _Mode.FULL_DUPLEX_STREAMED,
}
ENUM_TO_BODY_MODE = {value: name for name, value in BODY_MODE_TO_ENUM.items()}

_CAMEL_TO_FIELD = {
    "requestHeaderMode": "request_header_mode",
    "responseHeaderMode": "response_header_mode",
    "requestBodyMode": "request_body_mode",
    "responseBodyMode": "response_body_mode",
    "requestTrailerMode": "request_trailer_mode",
    "responseTrailerMode": "response_trailer_mode",
    "allowModeOverride": "allow_mode_override",
}


class ProcessingOptionsError(ValueError):
    """An ext_proc `processingOptions` value that agentgateway does not accept."""


@dataclasses.dataclass(frozen=True)
class ProcessingOptions:
    """Selection of the request and response parts sent to the ext_proc router, and how they are sent."""

    request_header_mode: str = "send"
    response_header_mode: str = "send"
    request_body_mode: str = "fullDuplexStreamed"
    response_body_mode: str = "fullDuplexStreamed"
    request_trailer_mode: str = "send"
    response_trailer_mode: str = "send"
    allow_mode_override: bool = False

    def __post_init__(self) -> None:
        for name in ("request_header_mode", "response_header_mode",
                     "request_trailer_mode", "response_trailer_mode"):
            _check_choice(name, getattr(self, name), HEADER_MODES)
        _check_choice("request_body_mode", self.request_body_mode, OVERRIDE_BODY_MODES)
        _check_choice("response_body_mode", self.response_body_mode, OVERRIDE_BODY_MODES)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any | None) -> ProcessingOptions:
        """Build options from the YAML's `processingOptions` mapping or a pydantic model.

        A mapping may use the YAML's camelCase keys or the snake_case field names; a model
        is read through `model_dump(by_alias=True)`. Missing keys keep agentgateway's
        defaults, and an unknown key or value raises ProcessingOptionsError.
        """
        if config is None:
            return cls()
        if hasattr(config, "model_dump"):
            config = config.model_dump(by_alias=True, exclude_none=True)
        if not isinstance(config, Mapping):
            raise ProcessingOptionsError(
                f"processingOptions must be a mapping, got {type(config).__name__}: {config!r}"
            )

        fields = {field.name for field in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = _CAMEL_TO_FIELD.get(key, key)
            if name not in fields:
                known = ", ".join(_CAMEL_TO_FIELD)
                raise ProcessingOptionsError(
                    f"unknown processingOptions key {key!r}; expected one of: {known}"
                )
            if value is None:
                continue
            if name == "allow_mode_override":
                if not isinstance(value, bool):
                    raise ProcessingOptionsError(
                        f"processingOptions.allowModeOverride must be true or false, got {value!r}"
                    )
            elif isinstance(value, str):
                value = _normalise_mode(value)
            values[name] = value
        for name in ("request_body_mode", "response_body_mode"):
            # `streamed` only comes from a router's mode_override, never from the YAML.
            if name in values:
                _check_choice(name, values[name], BODY_MODES)
        return cls(**values)

    def with_override(self, override: processing_mode_pb2.ProcessingMode) -> ProcessingOptions:
        """Return the options after a router's `mode_override`, as Envoy applies it.

        Envoy replaces the whole processing mode: a header mode left at DEFAULT means
        `send` for headers and `skip` for trailers, and a body mode left unset means `none`.
        """

        def header(value: int, default: str) -> str:
            if value == _Mode.SEND:
                return "send"
            if value == _Mode.SKIP:
                return "skip"
            return default

        return dataclasses.replace(
            self,
            request_header_mode=header(override.request_header_mode, "send"),
            response_header_mode=header(override.response_header_mode, "send"),
            request_body_mode=ENUM_TO_BODY_MODE.get(override.request_body_mode, "none"),
            response_body_mode=ENUM_TO_BODY_MODE.get(override.response_body_mode, "none"),
            request_trailer_mode=header(override.request_trailer_mode, "skip"),
            response_trailer_mode=header(override.response_trailer_mode, "skip"),
        )


def validate_options(options: ProcessingOptions) -> list[str]:
    """List the problems of options the gateway cannot honour; empty when they work.

    The one rejected combination: a `buffered` or `bufferedPartial` response body without
    `allowModeOverride`. For a streamed (SSE) response it would mean holding every event
    until the stream ends, and the router has no way to switch that response to a
    streamed mode. With the override allowed, a router that still leaves a stream in a
    buffered mode gets the body observe-only at the end of the stream.
    """
    problems: list[str] = []
    if options.response_body_mode in ("buffered", "bufferedPartial") and not options.allow_mode_override:
        problems.append(
            f"extProc.processingOptions.responseBodyMode: {options.response_body_mode} would hold "
            "a streamed (SSE) response until it ends, which meterway does not do. Set "
            "allowModeOverride: true so the router can switch streams to streamed mode, or use "
            "responseBodyMode: none or fullDuplexStreamed (streams are then sent to the router "
            "observe-only)."
        )
    return problems


def _normalise_mode(value: str) -> str:
    # The Kubernetes CRD spells the same values in PascalCase (`Buffered`, `Send`).
    for choice in HEADER_MODES + OVERRIDE_BODY_MODES:
        if value.lower() == choice.lower():
            return choice
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        key = next(camel for camel, field in _CAMEL_TO_FIELD.items() if field == name)
        raise ProcessingOptionsError(
            f"invalid processingOptions.{key} {value!r}; use one of: {', '.join(choices)}"
        )
