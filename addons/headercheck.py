"""Checks on request header fields that mitmproxy 12.3 passes to the hooks unchecked.

mitmproxy's HTTP/1 reader keeps a bare CR inside a header value and sets no limit on a
value's size (tests/test_bad_input.py sends both through a real gateway). RFC 9110 (section 5.5) forbids CR, LF and NUL
in a field value, and a provider or log viewer may read such a value differently from the
gateway, so the gateway rejects them before routing.
"""

from __future__ import annotations

from collections.abc import Iterable

# Per header field, name and value together. nginx reads request header lines into 8 KiB
# buffers by default; this is twice that, so long bearer tokens still pass.
MAX_FIELD_BYTES = 16 * 1024
# All header fields together, close to Envoy's default limit of 60 KiB.
MAX_TOTAL_BYTES = 64 * 1024

_FORBIDDEN = (b"\r", b"\n", b"\x00")


def header_problem(fields: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Return why the header fields cannot be accepted, or None when they are fine.

    The message names the header and its size, never its value, which may be a credential.
    """
    total = 0
    for name, value in fields:
        label = name.decode("latin-1")
        if any(char in name or char in value for char in _FORBIDDEN):
            return (f"header `{label}` contains a control character (CR, LF or NUL), which HTTP does "
                    "not allow in a header field; remove it from the header")
        size = len(name) + len(value)
        total += size
        if size > MAX_FIELD_BYTES:
            return (f"header `{label}` is {len(value)} bytes long, over the gateway's limit of "
                    f"{MAX_FIELD_BYTES} bytes per header; send a shorter value")
    if total > MAX_TOTAL_BYTES:
        return (f"request headers are {total} bytes in all, over the gateway's limit of {MAX_TOTAL_BYTES} "
                "bytes; send fewer or shorter headers")
    return None
