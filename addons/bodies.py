"""Decode, cap and read HTTP bodies for storage and usage accounting.

Nothing here raises on bad input: a body that is not what its headers claim keeps its original
bytes and gets a flag (`bad_gzip`, `not_utf8`, ...) that the request log stores.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

try:  # mitmproxy depends on brotli, but keep working without it.
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None

try:  # zstd is in the standard library from Python 3.14 and in backports.zstd before.
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:
    try:
        from backports import zstd as _zstd  # type: ignore[import-not-found,no-redef]
    except ImportError:  # pragma: no cover - depends on the environment
        _zstd = None


def _inflate(raw: bytes) -> bytes:
    # HTTP "deflate" is meant to be zlib-wrapped, but some servers send raw deflate data.
    try:
        return zlib.decompress(raw)
    except zlib.error:
        return zlib.decompress(raw, -zlib.MAX_WBITS)


def _decoders() -> dict[str, Callable[[bytes], bytes]]:
    decoders: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.decompress,
        "x-gzip": gzip.decompress,
        "deflate": _inflate,
    }
    if _brotli is not None:
        decoders["br"] = _brotli.decompress
    if _zstd is not None:
        decoders["zstd"] = _zstd.decompress
    return decoders


_DECODERS = _decoders()


def decode_body(raw: bytes, content_encoding: str | None) -> tuple[bytes, list[str]]:
    """Undo `Content-Encoding` (gzip, deflate, br, zstd, applied in the order listed).

    Returns the decoded bytes and flags. A body that fails to decode keeps its original bytes
    and gets `bad_<encoding>`; an encoding this build cannot decode gets `unsupported_<encoding>`.
    """
    if not content_encoding:
        return raw, []
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    data = raw
    # Codings are listed in the order they were applied, so they are undone from the end.
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            return raw, [f"unsupported_{coding}"]
        try:
            data = decoder(data)
        except Exception as error:  # each codec raises its own error type
            logger.debug("body labelled %s failed to decode: %s", coding, error)
            return raw, [f"bad_{coding}"]
    return data, []


def body_text(data: bytes) -> tuple[str, list[str]]:
    """Decode a body as UTF-8, replacing invalid bytes; flag `not_utf8` when it had any."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), ["not_utf8"]


def cap_body(data: bytes, max_bytes: int) -> tuple[bytes, bool]:
    """Cut a body to at most `max_bytes`; return it and whether it was cut.

    The caller keeps `len(data)` itself, because the cut body no longer shows its size.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
    if len(data) <= max_bytes:
        return data, False
    return data[:max_bytes], True


def parse_json(data: bytes | str | None) -> Any | None:
    """Parse a JSON body; return None when it is empty or not valid JSON.

    Invalid UTF-8 is replaced first and a UTF-8 byte order mark is skipped, so a body that is
    JSON apart from a few bad bytes in a string still parses.
    """
    if data is None:
        return None
    text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
    text = text.removeprefix("\ufeff").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def strict_json(data: bytes | None) -> Any | None:
    """Parse a body as JSON; None when it is empty, not JSON, or not valid UTF-8.

    Unlike `parse_json`, bad bytes make the body unreadable: the request log then counts
    tokens for a reply it could not read instead of trusting a repaired one.
    """
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
