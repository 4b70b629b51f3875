"""Pytest fixtures that start provider stand-ins; tests/conftest.py star-imports them.

Every stand-in fixture serves from a background thread, so the same fixture works in
synchronous tests (blocking SDK clients) and in async tests (async clients on the test's
own loop). Function-scoped fixtures give each test a fresh server; the `_session`
variants share one server per test session and call `reset()` before each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standins.anthropic_api import AnthropicStandIn
from tests.standins.base import StandIn
from tests.standins.gemini_api import GeminiStandIn
from tests.standins.ollama_api import OllamaStandIn
from tests.standins.openai_api import OpenAIStandIn
from tests.standins.tls import TestCA, shared_ca

__all__ = [
    "anthropic_session_server",
    "anthropic_standin",
    "anthropic_standin_session",
    "gemini_session_server",
    "gemini_standin",
    "gemini_standin_session",
    "ollama_session_server",
    "ollama_standin",
    "ollama_standin_session",
    "openai_session_server",
    "openai_standin",
    "openai_standin_session",
    "tls_ca",
]


@pytest.fixture(scope="session")
def tls_ca() -> TestCA:
    """Return the process-wide test CA (`.ca_pem_path`, `.server_context()`, `.client_context()`)."""
    return shared_ca()


def _serve(standin: StandIn) -> Iterator[StandIn]:
    standin.start_in_thread()
    try:
        yield standin
    finally:
        standin.stop_in_thread()


@pytest.fixture
def openai_standin() -> Iterator[OpenAIStandIn]:
    """Serve a fresh OpenAI stand-in over plain HTTP for one test."""
    yield from _serve(OpenAIStandIn())  # type: ignore[misc]


@pytest.fixture
def gemini_standin() -> Iterator[GeminiStandIn]:
    """Serve a fresh Gemini stand-in (native and OpenAI-compatible) for one test."""
    yield from _serve(GeminiStandIn())  # type: ignore[misc]


@pytest.fixture
def anthropic_standin() -> Iterator[AnthropicStandIn]:
    """Serve a fresh Anthropic stand-in for one test."""
    yield from _serve(AnthropicStandIn())  # type: ignore[misc]


@pytest.fixture
def ollama_standin() -> Iterator[OllamaStandIn]:
    """Serve a fresh Ollama stand-in for one test."""
    yield from _serve(OllamaStandIn())  # type: ignore[misc]


@pytest.fixture(scope="session")
def openai_session_server() -> Iterator[OpenAIStandIn]:
    yield from _serve(OpenAIStandIn())  # type: ignore[misc]


@pytest.fixture(scope="session")
def gemini_session_server() -> Iterator[GeminiStandIn]:
    yield from _serve(GeminiStandIn())  # type: ignore[misc]


@pytest.fixture(scope="session")
def anthropic_session_server() -> Iterator[AnthropicStandIn]:
    yield from _serve(AnthropicStandIn())  # type: ignore[misc]


@pytest.fixture(scope="session")
def ollama_session_server() -> Iterator[OllamaStandIn]:
    yield from _serve(OllamaStandIn())  # type: ignore[misc]


@pytest.fixture
def openai_standin_session(openai_session_server: OpenAIStandIn) -> OpenAIStandIn:
    """Return the session's shared OpenAI stand-in, its record and one-shot overrides cleared."""
    openai_session_server.reset()
    return openai_session_server


@pytest.fixture
def gemini_standin_session(gemini_session_server: GeminiStandIn) -> GeminiStandIn:
    """Return the session's shared Gemini stand-in, its record and one-shot overrides cleared."""
    gemini_session_server.reset()
    return gemini_session_server


@pytest.fixture
def anthropic_standin_session(anthropic_session_server: AnthropicStandIn) -> AnthropicStandIn:
    """Return the session's shared Anthropic stand-in, its record and one-shot overrides cleared."""
    anthropic_session_server.reset()
    return anthropic_session_server


@pytest.fixture
def ollama_standin_session(ollama_session_server: OllamaStandIn) -> OllamaStandIn:
    """Return the session's shared Ollama stand-in, its record and one-shot overrides cleared."""
    ollama_session_server.reset()
    return ollama_session_server
