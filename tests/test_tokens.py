"""Tests for offline token counting."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import bpe_openai
import pytest

from addons import tokens

SAMPLES = [
    "hello world",
    "Explain the concept of Occam's Razor and provide a simple, everyday example.",
    "naïve café — 東京 😀 \r\n\tdef f(x):\n    return x**2  # 12345678",
    "",
]


def test_known_token_ids() -> None:
    # Token ids published in tiktoken's own tests for "hello world".
    assert tokens.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert tokens.get_encoding("o200k_base").encode("hello world") == [24912, 2375]


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("text", SAMPLES)
def test_counts_match_bpe_openai_tokenizer(name: str, text: str) -> None:
    # bpe-openai's Rust tokenizer is an independent implementation of the same encodings.
    expected = len(bpe_openai.get_encoding(name).encode(text))

    assert len(tokens.get_encoding(name).encode(text)) == expected


@pytest.mark.parametrize(("model", "encoding"), [
    ("gpt-4o", "o200k_base"),
    ("gpt-4o-mini-2024-07-18", "o200k_base"),
    ("gpt-4.1-nano", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("o3-mini", "o200k_base"),
    ("o1", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-4-turbo", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"),
    ("text-embedding-3-small", "cl100k_base"),
    ("gemini-2.5-flash", "o200k_base"),
    ("qwen2.5-coder:7b", "o200k_base"),
    (None, "o200k_base"),
])
def test_encoding_for_model(model: str | None, encoding: str) -> None:
    assert tokens.encoding_for_model(model) == encoding


def test_count_uses_model_encoding() -> None:
    text = "naïve café — 東京"

    assert tokens.count(text, "gpt-4") == len(tokens.get_encoding("cl100k_base").encode(text))
    assert tokens.count(text, "gpt-4o") == len(tokens.get_encoding("o200k_base").encode(text))
    assert tokens.count("", "gpt-4o") == 0


def test_count_special_token_text_is_plain() -> None:
    assert tokens.count("<|endoftext|>", "gpt-4o") > 1


def test_encoding_cached_per_process() -> None:
    assert tokens.get_encoding("o200k_base") is tokens.get_encoding("o200k_base")


def test_count_offline_with_empty_cache(tmp_path: Path) -> None:
    # A fresh interpreter, so no encoding is cached yet; any socket use fails the run.
    script = textwrap.dedent("""
        import socket
        def refuse(*args, **kwargs):
            raise RuntimeError("network access attempted")
        socket.socket = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import sys
        from addons import tokens
        print(tokens.count("hello world", "gpt-4o"), tokens.count("hello world", "gpt-4"))
        # Only its data files are read: the package itself builds three tokenizers on import.
        print("bpe_openai" in sys.modules)
    """)
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(tmp_path), DATA_GYM_CACHE_DIR=str(tmp_path))

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=60, cwd=Path(__file__).parent.parent)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2", "False"]
    assert list(tmp_path.iterdir()) == []


def test_unknown_encoding_error() -> None:
    with pytest.raises(tokens.EncodingDataError, match="unknown encoding 'p50k_base'"):
        tokens.get_encoding("p50k_base")
