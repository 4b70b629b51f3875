"""Count tokens with tiktoken, offline, from the encodings shipped in the `bpe-openai` wheel.

tiktoken downloads its encoding files on first use. The gateway must never do that, so the
ranks are read from `bpe_openai/data/<name>.tiktoken.gz`, checked against the SHA-256 that
tiktoken expects for the same file, and handed to `tiktoken.Encoding` directly.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken_ext.openai_public as openai_public

logger = logging.getLogger(__name__)

DEFAULT_ENCODING = "o200k_base"

# Model name prefixes that use the older cl100k_base encoding. Everything else, including
# gpt-4o, gpt-4.1, gpt-5, the o-series and unknown models, counts with o200k_base.
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3",
                    "text-embedding-ada-002")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o",
                   "gpt-oss")

_constructors: dict[str, Callable[[], dict[str, Any]]] = {
    "o200k_base": openai_public.o200k_base,
    "cl100k_base": openai_public.cl100k_base,
}
_encodings: dict[str, tiktoken.Encoding] = {}
_lock = threading.Lock()


class EncodingDataError(RuntimeError):
    """The encoding file in the bpe-openai package is missing or does not match tiktoken's hash."""


def encoding_for_model(model: str | None) -> str:
    """Return the tiktoken encoding name used to count tokens for `model`."""
    name = (model or "").lower().rsplit("/", 1)[-1]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return DEFAULT_ENCODING


def get_encoding(name: str) -> tiktoken.Encoding:
    """Load an encoding once per process from the bundled file; raise `EncodingDataError`."""
    with _lock:
        encoding = _encodings.get(name)
        if encoding is None:
            encoding = _build_encoding(name)
            _encodings[name] = encoding
        return encoding


def is_loaded(name: str) -> bool:
    """Tell whether `count` can use encoding `name` without building it first."""
    return name in _encodings


def load_in_thread(name: str, on_done: Callable[[], None]) -> None:
    """Build encoding `name` in a thread, then call `on_done` from that thread.

    Building an encoding takes about half a second of CPU. The gateway builds one only when
    the first reply without usage needs it, and never on the event loop, where it would stall
    every flow. A load that fails is logged once and `on_done` still runs, so the rows that
    waited are stored (their counts then come from `count`, which raises again).
    """
    def run() -> None:
        try:
            get_encoding(name)
        except EncodingDataError as error:
            logger.warning("token counting is unavailable: %s", error)
        finally:
            on_done()

    threading.Thread(target=run, name=f"tiktoken-{name}", daemon=True).start()


def count(text: str, model: str | None = None) -> int:
    """Count the tokens of `text` as `model` would see it (o200k_base when unknown).

    Special-token strings such as `<|endoftext|>` are counted as ordinary text, because prompt
    text from a client is data, not control tokens.
    """
    if not text:
        return 0
    encoding = get_encoding(encoding_for_model(model))
    return len(encoding.encode(text, disallowed_special=()))


def _build_encoding(name: str) -> tiktoken.Encoding:
    constructor = _constructors.get(name)
    if constructor is None:
        raise EncodingDataError(
            f"unknown encoding {name!r}; bundled encodings are {sorted(_constructors)}")
    # tiktoken's own constructor contains the regex pattern, special tokens and expected hash.
    # Its loader is swapped for one that reads the bundled file, so no URL is ever opened.
    original_loader = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = _bundled_loader(name)
    try:
        spec = constructor()
    finally:
        openai_public.load_tiktoken_bpe = original_loader
    logger.info("loaded tiktoken encoding %s from the bpe-openai package", name)
    return tiktoken.Encoding(
        name=spec["name"],
        pat_str=spec["pat_str"],
        mergeable_ranks=spec["mergeable_ranks"],
        special_tokens=spec["special_tokens"],
        explicit_n_vocab=spec.get("explicit_n_vocab"),
    )


def _bundled_loader(name: str) -> Callable[..., dict[bytes, int]]:
    def load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        data = _read_bundled(name)
        digest = hashlib.sha256(data).hexdigest()
        if expected_hash is not None and digest != expected_hash:
            raise EncodingDataError(
                f"bpe_openai/data/{name}.tiktoken.gz has SHA-256 {digest}, but tiktoken expects "
                f"{expected_hash} for {url}; reinstall bpe-openai or pin a matching version")
        return _parse_ranks(data, name)

    return load


def _read_bundled(name: str) -> bytes:
    # Only the data files are wanted. Importing `bpe_openai` (which `importlib.resources`
    # would do) builds its own tokenizers for three encodings, a second of CPU and tens of
    # MiB that the gateway never uses, so the file is found without running the package.
    spec = importlib.util.find_spec("bpe_openai")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise EncodingDataError(f"cannot find bpe_openai/data/{name}.tiktoken.gz; install the bpe-openai package")
    path = Path(folders[0]) / "data" / f"{name}.tiktoken.gz"
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise EncodingDataError(
            f"cannot read {path} ({error}); install the bpe-openai package") from error


def _parse_ranks(data: bytes, name: str) -> dict[bytes, int]:
    # Each line is "<base64 token> <rank>".
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as error:
            raise EncodingDataError(
                f"bpe_openai/data/{name}.tiktoken.gz line {number} is not "
                f"'<base64> <rank>': {line[:60]!r}") from error
    return ranks
