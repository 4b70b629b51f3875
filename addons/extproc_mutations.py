"""Apply the header and body mutations of an ext_proc reply, following Envoy's rules.

Pure helpers without gRPC calls, so the rules test without a router:

- `set_headers` read `raw_value` first, then `value` (Envoy sends and reads `raw_value`;
  some routers still fill `value`). The deprecated `append` flag wins when present
  (true appends, false overwrites). Without it, an `append_action` of 0 overwrites, as in
  Envoy, and ADD_IF_ABSENT and OVERWRITE_IF_EXISTS are honoured (Envoy overwrites for
  these too). An empty value without `keep_empty_value` is skipped.
- Setting `x-envoy*`, `:method`, `:authority`, `:scheme` or `host` is ignored, as Envoy
  does. `:path` changes the request path, `:status` the response status.
- Removing a pseudo-header (`:...`), `host` or `x-envoy*` is ignored.
- A header name that is not an HTTP token, or a value with CR, LF or NUL, is a protocol
  error (`MutationError`), as in Envoy, so the failure mode decides what happens.
"""

from __future__ import annotations

import dataclasses
import json
import re

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

Header = tuple[str, str]

_Action = base_pb2.HeaderValueOption
_TOKEN = re.compile(r"^:?[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_IGNORED_SETS = frozenset({":method", ":authority", ":scheme", "host"})


class MutationError(ValueError):
    """A reply from the router that breaks the ext_proc protocol or Envoy's header rules."""


@dataclasses.dataclass(frozen=True)
class ImmediateResponse:
    """An HTTP response the gateway sends itself instead of forwarding the request."""

    status: int
    headers: list[Header]
    body: bytes
    grpc_status: int | None = None
    details: str = ""


@dataclasses.dataclass
class HeaderEditor:
    """Headers of one message under mutation, plus a record of what the router changed.

    `path` is None for a response and `status` is None for a request, so `:path` and
    `:status` only apply where they mean something.
    """

    headers: list[Header]
    path: str | None = None
    status: int | None = None
    set_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    removed_headers: list[str] = dataclasses.field(default_factory=list)

    def apply(self, mutation: pb.HeaderMutation) -> None:
        """Apply `remove_headers`, then `set_headers`, in the order Envoy uses."""
        for raw_name in mutation.remove_headers:
            name = raw_name.lower()
            if not _TOKEN.match(name):
                raise MutationError(f"remove_headers has an invalid header name {raw_name!r}")
            if name.startswith(":") or name == "host" or name.startswith("x-envoy"):
                continue
            before = len(self.headers)
            self.headers = [(key, value) for key, value in self.headers if key.lower() != name]
            if len(self.headers) != before or name in self.set_headers:
                self.removed_headers.append(name)
            self.set_headers.pop(name, None)

        for option in mutation.set_headers:
            if option.HasField("header"):
                self._set(option)

    def _set(self, option: base_pb2.HeaderValueOption) -> None:
        name = option.header.key.lower()
        if option.header.raw_value:
            value = option.header.raw_value.decode("utf-8", "surrogateescape")
        else:
            value = option.header.value
        if not _TOKEN.match(name):
            raise MutationError(f"set_headers has an invalid header name {option.header.key!r}")
        if _BAD_VALUE.search(value):
            raise MutationError(f"set_headers value for {name!r} contains CR, LF or NUL")
        if not value and not option.keep_empty_value:
            return
        if name in _IGNORED_SETS or name.startswith("x-envoy"):
            return

        if option.HasField("append"):
            action = _Action.APPEND_IF_EXISTS_OR_ADD if option.append.value else _Action.OVERWRITE_IF_EXISTS_OR_ADD
        elif option.append_action == _Action.APPEND_IF_EXISTS_OR_ADD:
            # Envoy 1.40's ext_proc filter reads only `append`, whose default there is false,
            # so a reply that sets neither field overwrites. proto3 cannot tell an unset
            # append_action from APPEND_IF_EXISTS_OR_ADD (both are 0), so 0 overwrites here
            # too. A router that wants to append sets `append: true`.
            action = _Action.OVERWRITE_IF_EXISTS_OR_ADD
        else:
            # NOTE: Envoy 1.40 overwrites for these actions as well. meterway honours them,
            # as agentgateway does, because a router that sets them means them.
            action = option.append_action

        if name in (":path", ":status"):
            self._set_pseudo(name, value, action)
            return

        exists = any(key.lower() == name for key, _ in self.headers)
        if action == _Action.ADD_IF_ABSENT and exists:
            return
        if action == _Action.OVERWRITE_IF_EXISTS and not exists:
            return
        if action in (_Action.OVERWRITE_IF_EXISTS_OR_ADD, _Action.OVERWRITE_IF_EXISTS):
            self._replace(name, value)
            self.set_headers[name] = value
        elif action in (_Action.APPEND_IF_EXISTS_OR_ADD, _Action.ADD_IF_ABSENT):
            self.headers.append((name, value))
            previous = self.set_headers.get(name)
            self.set_headers[name] = value if previous is None else f"{previous}, {value}"
        else:
            raise MutationError(f"set_headers has an unknown append_action {action} for {name!r}")

    def _set_pseudo(self, name: str, value: str, action: int) -> None:
        current = self.path if name == ":path" else self.status
        if current is None or action == _Action.ADD_IF_ABSENT:
            # A pseudo-header always exists, so "add if absent" never applies.
            return
        if name == ":path":
            if not value.startswith("/"):
                raise MutationError(f"set_headers :path must start with '/', got {value!r}")
            self.path = value
        else:
            if not value.isdigit() or not 200 <= int(value) <= 599:
                raise MutationError(f"set_headers :status must be 200-599, got {value!r}")
            self.status = int(value)
        self.set_headers[name] = value

    def _replace(self, name: str, value: str) -> None:
        # Keep the position of the first occurrence, drop the others.
        replaced: list[Header] = []
        done = False
        for key, old in self.headers:
            if key.lower() != name:
                replaced.append((key, old))
            elif not done:
                replaced.append((key, value))
                done = True
        if not done:
            replaced.append((name, value))
        self.headers = replaced


def apply_body_mutation(mutation: pb.BodyMutation, body: bytes) -> bytes | None:
    """Return the body after a `body_mutation`, or None when it leaves the body as it is."""
    kind = mutation.WhichOneof("mutation")
    if kind == "body":
        return mutation.body
    if kind == "clear_body" and mutation.clear_body:
        return b""
    return None


def set_content_length(headers: list[Header], body: bytes) -> list[Header]:
    """Return headers whose single `content-length` matches the body."""
    other_headers = [(key, value) for key, value in headers if key.lower() != "content-length"]
    other_headers.append(("content-length", str(len(body))))
    return other_headers


def headers_to_proto(headers: list[Header]) -> base_pb2.HeaderMap:
    """Build a HeaderMap with lower-case keys and values in `raw_value` only, as Envoy sends."""
    return base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=key.lower(), raw_value=value.encode("utf-8", "surrogateescape"))
            for key, value in headers
        ]
    )


def immediate_from_proto(message: pb.ImmediateResponse) -> ImmediateResponse:
    """Convert the router's `immediate_response` into the response the gateway sends.

    Envoy sends 200 when the status is missing or below 200, and sends the body as
    text/plain unless the router set a content type.
    """
    status = message.status.code if message.HasField("status") else 0
    if not 200 <= status <= 599:
        status = 200
    editor = HeaderEditor(headers=[])
    editor.apply(message.headers)
    body = message.body.encode("utf-8") if isinstance(message.body, str) else bytes(message.body)
    headers = editor.headers
    if body and not any(key.lower() == "content-type" for key, _ in headers):
        headers.append(("content-type", "text/plain"))
    grpc_status = message.grpc_status.status if message.HasField("grpc_status") else None
    return ImmediateResponse(status, set_content_length(headers, body), body, grpc_status, message.details)


def failure_response(target: str, reason: str, code: str) -> ImmediateResponse:
    """Build the OpenAI-style error the gateway sends when the router fails and failClosed is set.

    `code` is `router_timeout` (sent as 504), `router_unavailable` or
    `router_protocol_error` (both 500).
    """
    status = 504 if code == "router_timeout" else 500
    message = (
        f"The ext_proc router at {target} failed: {reason}. Check that the router is running "
        "and reachable, or set failureMode: failOpen in the extProc policy to forward "
        "requests unchanged when it fails."
    )
    payload = {
        "error": {
            "message": message,
            "type": "router_error",
            "param": None,
            "code": code,
        }
    }
    body = json.dumps(payload).encode("utf-8")
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    return ImmediateResponse(status, headers, body)
