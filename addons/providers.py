"""The AI providers: their hosts and how a request reaches each.

The defaults follow agentgateway v1.3's providers: the host, the API path a client path maps
to, how the backend key is sent, and the provider id that the model catalog and the request
log use (`openai`, `gcp.gemini`, `anthropic`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    kind: str  # the YAML key: openAI, gemini, anthropic
    catalog_id: str  # the id in agentgateway's model catalog and in the log
    host: str
    port: int
    # The path prefix that replaces a client's leading `/v1` (None keeps the client path).
    api_prefix: str | None
    auth_header: str  # the header that carries the backend key
    auth_scheme: str  # "Bearer " or "" for a bare key


PROVIDERS: dict[str, Provider] = {
    "openAI": Provider("openAI", "openai", "api.openai.com", 443, None, "authorization", "Bearer "),
    # Gemini's OpenAI-compatible endpoint lives under /v1beta/openai and takes a Bearer key.
    "gemini": Provider(
        "gemini", "gcp.gemini", "generativelanguage.googleapis.com", 443, "/v1beta/openai",
        "authorization", "Bearer ",
    ),
    "anthropic": Provider("anthropic", "anthropic", "api.anthropic.com", 443, None, "x-api-key", ""),
}

ANTHROPIC_VERSION = "2023-06-01"


class UnsupportedProvider(ValueError):
    """The config names a provider that meterway cannot send requests to yet."""


def provider_for(kind: str) -> Provider:
    """Return the provider for a YAML provider key such as `openAI`."""
    try:
        return PROVIDERS[kind]
    except KeyError:
        supported = ", ".join(sorted(PROVIDERS))
        raise UnsupportedProvider(
            f"provider {kind!r} is not supported by meterway yet; use one of {supported}"
        ) from None


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    """Split `host[:port]`, including bracketed IPv6 literals, into host and port."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host, port
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return value, default_port


def is_loopback(host: str) -> bool:
    """Tell whether a host name or address stays on this machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_native_gemini(path: str) -> bool:
    # generateContent and friends live under /v1beta/models/NAME:method (or /v1/...).
    return path.startswith(("/v1beta/", "/v1/models/", "/v1alpha/")) and ":" in path


def upstream_path(provider: Provider, client_path: str, *, host_override: bool,
                  path_override: str | None, path_prefix: str | None) -> str:
    """Compute the upstream path (query string included) for a client's request path."""
    path, sep, query = client_path.partition("?")
    suffix = f"?{query}" if sep else ""
    if path_override:
        return path_override + suffix
    prefix = path_prefix if path_prefix is not None else (None if host_override else provider.api_prefix)
    if prefix is None:
        return client_path
    # NOTE: agentgateway's pathPrefix is read here as a replacement for the client's leading
    # `/v1`, the same rule the providers' own prefixes follow.
    if path.startswith(prefix.rstrip("/") + "/") or _is_native_gemini(path):
        return client_path  # the client already used the provider's own path
    if path == "/v1" or path.startswith("/v1/"):
        path = path[len("/v1"):]
    return prefix.rstrip("/") + path + suffix


def resolve_upstream(provider: Provider, client_path: str, *, host_override: str | None,
                     path_override: str | None, path_prefix: str | None) -> Upstream:
    """Return where a request for this provider goes, before any upstream mapping.

    A `hostOverride` is reached over plain HTTP, as agentgateway does without a backend TLS
    policy; the provider's own host over HTTPS.
    """
    path = upstream_path(
        provider, client_path, host_override=bool(host_override),
        path_override=path_override, path_prefix=path_prefix,
    )
    if host_override:
        host, port = split_hostport(host_override, 80)
        return Upstream("http", host, port, path)
    return Upstream("https", provider.host, provider.port, path)
