"""The made-up homelab traffic that `bench.gen_requests` draws request rows from.

Routes follow configs/homelab.yaml: port 3000 sends `MoM` through the semantic router to
Ollama, OpenAI or Gemini (with a Gemini fallback route when the router fails open), and the
`llm:` listener on port 4000 takes provider models by name. Prices are USD per million
tokens (input, cached input, output). They are rounded list prices from late 2025, close
enough for charts but not a price catalog.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backend:
    """One route and backend of the synthetic gateway, with how its provider behaves."""

    route: str
    backend: str
    provider: str
    upstream: str
    bind: int
    models: tuple[str, ...]
    model_weights: tuple[float, ...]
    routed: bool  # True when the semantic router picks this route
    local: bool
    ttft_median_ms: float
    tokens_per_second: float


BACKENDS: tuple[tuple[Backend, float], ...] = (
    (Backend("3000/0/0/ollama", "ollama", "openai", "localhost:11434", 3000,
             ("qwen2.5-coder:7b",), (1.0,), True, True, 450.0, 35.0), 0.30),
    (Backend("3000/0/1/openai", "openai", "openai", "api.openai.com:443", 3000,
             ("gpt-4o",), (1.0,), True, False, 420.0, 85.0), 0.18),
    (Backend("3000/0/2/gemini", "gemini", "gcp.gemini", "generativelanguage.googleapis.com:443", 3000,
             ("gemini-2.5-flash",), (1.0,), True, False, 550.0, 160.0), 0.20),
    (Backend("4000/llm/openai", "openai", "openai", "api.openai.com:443", 4000,
             ("gpt-4o-mini", "gpt-4.1", "o3-mini", "text-embedding-3-small", "o4-mini-deep-research"),
             (0.45, 0.2, 0.15, 0.17, 0.03), False, False, 380.0, 95.0), 0.16),
    (Backend("4000/llm/anthropic", "anthropic", "anthropic", "api.anthropic.com:443", 4000,
             ("claude-sonnet-4-5", "claude-3-5-haiku-latest"), (0.6, 0.4), False, False, 900.0, 65.0), 0.10),
    (Backend("4000/llm/gemini", "gemini", "gcp.gemini", "generativelanguage.googleapis.com:443", 4000,
             ("gemini-2.5-pro",), (1.0,), False, False, 1400.0, 120.0), 0.06),
)

FALLBACK = Backend("3000/0/3/gemini-default", "gemini-default", "gcp.gemini",
                   "generativelanguage.googleapis.com:443", 3000, ("gemini-2.5-flash",), (1.0,),
                   False, False, 550.0, 160.0)

# Model -> (input, cached input, output) USD per million tokens. A model missing here is
# logged as `unpriced` with a NULL cost, as the gateway does for unknown models.
PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "text-embedding-3-small": (0.02, 0.02, 0.0),
    "gemini-2.5-flash": (0.30, 0.075, 2.50),
    "gemini-2.5-pro": (1.25, 0.31, 10.00),
    "claude-sonnet-4-5": (3.00, 0.30, 15.00),
    "claude-3-5-haiku-latest": (0.80, 0.08, 4.00),
}
ANTHROPIC_CACHE_WRITE_FACTOR = 1.25
REASONING_MODELS = frozenset({"o3-mini", "gemini-2.5-pro", "o4-mini-deep-research"})

CLIENTS = (("laptop", 0.35), ("agent-coder", 0.3), ("ci-bot", 0.15), ("grafana", 0.05), (None, 0.15))

USER_AGENTS = {
    "openai": ("OpenAI/Python 1.54.3", "AsyncOpenAI/Python 1.54.3", "curl/8.5.0", "aider/0.86"),
    "gcp.gemini": ("OpenAI/Python 1.54.3", "google-genai-sdk/1.2.0 gl-python/3.12", "curl/8.5.0"),
    "anthropic": ("anthropic-python/0.40.0", "claude-cli/1.0.3", "curl/8.5.0"),
}

# Outcome -> (share of all requests, HTTP statuses it comes with, weights).
ERROR_OUTCOMES = {
    "upstream_error": (0.03, (429, 400, 401, 500, 503, 529), (0.45, 0.2, 0.05, 0.1, 0.15, 0.05)),
    "gateway_error": (0.03, (400, 401, 404, 413), (0.3, 0.4, 0.2, 0.1)),
    "upstream_unreachable": (0.03, (502,), (1.0,)),
    "timeout": (0.03, (504,), (1.0,)),
    "client_disconnected": (0.03, (200, None), (0.6, 0.4)),
    "router_response": (0.02, (200, 403), (0.7, 0.3)),
}

ERROR_MESSAGES = {
    "upstream_error": "provider answered {status}",
    "gateway_error": "request rejected by the gateway with {status}",
    "upstream_unreachable": "cannot connect to {upstream}: connection refused",
    "timeout": "no response from {upstream} within 300 s",
    "client_disconnected": "client disconnected",
    "router_response": "the router answered the request itself",
}

TASKS = (
    "parse an ISO-8601 timestamp with a timezone offset",
    "retry an HTTP request with exponential backoff",
    "merge two sorted lists without duplicates",
    "stream rows from a large CSV file",
    "validate an email address",
    "compute a moving average over a time series",
    "read a YAML config and expand environment variables",
    "rank search results by BM25",
)
TOPICS = (
    "write-ahead logging in SQLite", "the CAP theorem", "Kubernetes readiness probes",
    "TLS certificate pinning", "Python's asyncio event loop", "gradient descent",
    "consistent hashing", "Rust lifetimes", "OpenTelemetry spans", "HTTP/2 flow control",
)
PROMPTS = (
    "Write a Python function that can {task}.",
    "Explain {topic} in simple terms.",
    "Review this code and suggest how to {task} more safely.",
    "Summarise the trade-offs of {topic} for a homelab.",
    "Give me three test cases for a function that should {task}.",
)
ANSWERS = (
    "Here is a short implementation that does it, with comments on the edge cases.",
    "In short: {topic} trades a little latency for durability; the details follow.",
    "The main risk is unbounded retries; cap them and add jitter.",
    "Sure. First, the happy path; then the two failure modes you should test.",
)
