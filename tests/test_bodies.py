"""Tests for body decoding, capping and tolerant JSON parsing."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from addons.bodies import body_text, cap_body, decode_body, parse_json

BODY = '{"model": "gpt-4o", "text": "héllo"}'.encode()


@pytest.mark.parametrize(("encoding", "encoded"), [
    ("gzip", gzip.compress(BODY)),
    ("GZIP", gzip.compress(BODY)),
    ("x-gzip", gzip.compress(BODY)),
    ("deflate", zlib.compress(BODY)),
    ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate without the zlib wrapper
    ("br", brotli.compress(BODY)),
    ("identity", BODY),
    (None, BODY),
    ("", BODY),
])
def test_decode_known_encodings(encoding: str | None, encoded: bytes) -> None:
    assert decode_body(encoded, encoding) == (BODY, [])


def test_decode_zstd() -> None:
    zstd = pytest.importorskip("backports.zstd")

    assert decode_body(zstd.compress(BODY), "zstd") == (BODY, [])


def test_decode_stacked_encodings() -> None:
    # "gzip, br" means gzip was applied first, so br is undone first.
    encoded = brotli.compress(gzip.compress(BODY))

    assert decode_body(encoded, "gzip, br") == (BODY, [])


def test_decode_gzip_label_on_plain_body() -> None:
    assert decode_body(BODY, "gzip") == (BODY, ["bad_gzip"])


@pytest.mark.parametrize("encoding", ["br", "deflate"])
def test_decode_bad_body_keeps_bytes(encoding: str) -> None:
    assert decode_body(b"not compressed", encoding) == (b"not compressed", [f"bad_{encoding}"])


def test_decode_unknown_encoding() -> None:
    assert decode_body(BODY, "compress") == (BODY, ["unsupported_compress"])


def test_body_text_utf8() -> None:
    assert body_text(BODY) == ('{"model": "gpt-4o", "text": "héllo"}', [])


def test_body_text_not_utf8() -> None:
    latin1 = "café".encode("latin-1")

    assert body_text(latin1) == ("caf\ufffd", ["not_utf8"])


def test_cap_two_megabyte_body() -> None:
    body = b"x" * (2 * 1024 * 1024)

    capped, truncated = cap_body(body, 1024 * 1024)

    assert truncated is True
    assert len(capped) == 1024 * 1024
    assert len(body) == 2 * 1024 * 1024


def test_cap_small_body_unchanged() -> None:
    assert cap_body(BODY, len(BODY)) == (BODY, False)


def test_cap_negative_limit() -> None:
    with pytest.raises(ValueError, match="max_bytes must be 0 or more, got -1"):
        cap_body(BODY, -1)


@pytest.mark.parametrize(("data", "expected"), [
    (BODY, {"model": "gpt-4o", "text": "héllo"}),
    ("\ufeff[1, 2]".encode(), [1, 2]),
    (b'{"a": "\xff"}', {"a": "\ufffd"}),
    ('{"a": 1}', {"a": 1}),
    (b"", None),
    (b"  \n", None),
    (b"{not json", None),
    (b"data: {}", None),
    (None, None),
])
def test_parse_json_tolerant(data: bytes | str | None, expected: object) -> None:
    assert parse_json(data) == expected
