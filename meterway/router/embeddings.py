"""The embedding classifier: an OpenAI-compatible `/v1/embeddings` client and the example index.

Route examples are embedded once at start and kept as unit vectors. Each prompt costs one
embeddings request, bounded by the configured timeout. When the endpoint is down,
requests are routed by the rules and the default, and the index is rebuilt in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from meterway.router.classify import CompiledRoute, best_example, normalize
from meterway.router.config import EmbeddingsConfig

logger = logging.getLogger(__name__)

# Embedding models have a context limit (nomic-embed-text: 8192 tokens), and the start of a
# prompt carries most of its topic. NOTE: the cut is by characters, not tokens.
MAX_PROMPT_CHARS = 4000
# Seconds between attempts to build the example index while the endpoint is down.
RETRY_INTERVAL = 30.0
# Seconds between repeated "endpoint failed" warnings, so an outage logs a few lines, not one per request.
WARNING_INTERVAL = 60.0


class EmbeddingError(Exception):
    """Raised when the embeddings endpoint fails, times out or returns an unexpected body."""


def embeddings_url(url: str) -> str:
    """Return the full embeddings URL for a base URL (`http://host:11434`, `.../v1`) or a full one."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/embeddings"):
        return url
    if path.endswith("/v1"):
        path += "/embeddings"
    elif path == "":
        path = "/v1/embeddings"
    else:
        return url
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


class EmbeddingClient:
    """Calls an OpenAI-compatible embeddings endpoint; the API key goes only into the request."""

    def __init__(self, config: EmbeddingsConfig) -> None:
        self.url = embeddings_url(config.url)
        self.model = config.model
        self.timeout = config.timeout
        headers = {"content-type": "application/json"}
        if config.api_key is not None:
            headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        # trust_env=False: a homelab endpoint on loopback must not go through a proxy from the environment.
        self._http = httpx.AsyncClient(headers=headers, timeout=config.timeout, trust_env=False)

    async def embed(self, texts: Sequence[str], timeout: float | None = None) -> list[list[float]]:
        """Return one embedding per text, in order; raise EmbeddingError on any failure."""
        payload = {"model": self.model, "input": list(texts)}
        limit = timeout or self.timeout
        try:
            # httpx's timeout applies per connect/read step; wait_for bounds the whole request.
            request = self._http.post(self.url, json=payload, timeout=limit)
            response = await asyncio.wait_for(request, limit)
        except (TimeoutError, httpx.TimeoutException):
            raise EmbeddingError(f"{self.url} timed out after {limit:g} s") from None
        except httpx.HTTPError as error:
            raise EmbeddingError(f"{self.url} failed: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            raise EmbeddingError(f"{self.url} returned HTTP {response.status_code}: {response.text[:200]}")
        return _parse_vectors(response, len(texts), self.url)

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()


def _parse_vectors(response: httpx.Response, count: int, url: str) -> list[list[float]]:
    try:
        items = response.json()["data"]
        ordered = sorted(items, key=lambda item: item.get("index", 0))
        vectors = [[float(x) for x in item["embedding"]] for item in ordered]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise EmbeddingError(f"{url} returned a body without `data[].embedding` lists: {error}") from None
    if len(vectors) != count:
        raise EmbeddingError(f"{url} returned {len(vectors)} embeddings for {count} inputs")
    return vectors


class EmbeddingClassifier:
    """Holds the example vectors of the routes and compares prompts against them."""

    def __init__(self, config: EmbeddingsConfig, routes: Sequence[CompiledRoute], client: EmbeddingClient | None = None) -> None:
        self.config = config
        self.routes = list(routes)
        self.client = client or EmbeddingClient(config)
        self.examples: list[tuple[int, tuple[float, ...]]] | None = None
        self._next_build = 0.0
        self._build_task: asyncio.Task[None] | None = None
        self._last_warning = -WARNING_INTERVAL
        self._suppressed = 0

    @property
    def ready(self) -> bool:
        """Tell whether the example vectors are loaded."""
        return self.examples is not None

    async def build(self) -> bool:
        """Embed every route example in one request; return False (and warn) on failure."""
        texts = [(route.index, example) for route in self.routes for example in route.config.examples]
        if not texts:
            self.examples = []
            return True
        self._next_build = time.monotonic() + RETRY_INTERVAL
        started = time.perf_counter()
        try:
            # Start-up may embed many examples, so it gets several times the per-prompt timeout.
            vectors = await self.client.embed([text for _, text in texts], timeout=self.config.timeout * 5)
        except EmbeddingError as error:
            self.warn(f"embedding classifier unavailable, routing with rules and the default only: {error}; retrying in {RETRY_INTERVAL:g} s")
            return False
        self.examples = [(route_index, normalize(vector)) for (route_index, _), vector in zip(texts, vectors)]
        logger.info("embedded %d route examples with %s in %.0f ms", len(texts), self.config.model, (time.perf_counter() - started) * 1000)
        return True

    def _schedule_rebuild(self) -> None:
        if self._build_task is not None and not self._build_task.done():
            return
        if time.monotonic() < self._next_build:
            return
        self._build_task = asyncio.get_running_loop().create_task(self._rebuild())

    async def _rebuild(self) -> None:
        await self.build()

    async def similarity(self, text: str) -> tuple[int, float] | None:
        """Return (route index, cosine) of the closest example, or None when unavailable.

        Raises no EmbeddingError, and the embeddings request is cancelled after the configured
        timeout. A failure logs a rate-limited warning, and the caller uses the default.
        """
        if self.examples is None:
            self._schedule_rebuild()
            return None
        if not self.examples:
            return None
        try:
            vectors = await self.client.embed([text[:MAX_PROMPT_CHARS]])
        except EmbeddingError as error:
            self.warn(f"embedding a prompt failed, falling back to the default: {error}")
            return None
        return best_example(vectors[0], self.examples)

    def warn(self, message: str) -> None:
        """Log a warning, at most once per WARNING_INTERVAL, with the count of skipped repeats."""
        now = time.monotonic()
        if now - self._last_warning < WARNING_INTERVAL:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar warnings suppressed)"
        logger.warning(message)
        self._last_warning = now
        self._suppressed = 0

    async def close(self) -> None:
        """Cancel a pending rebuild and close the HTTP client."""
        if self._build_task is not None:
            self._build_task.cancel()
        await self.client.close()
