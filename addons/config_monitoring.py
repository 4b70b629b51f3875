"""Config models for monitoring: `config.tracing`, `config.metrics`, `config.statsAddr` and
`meterway.alerts`.

`tracing` and `metrics` keep agentgateway's field names; `meterway.alerts` is meterway's own.
Durations are seconds as a number, or a string with a unit (`500ms`, `30s`, `5m`, `1h`, `1d`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from addons.config_base import ConfigModel, Opaque, exactly_one

# agentgateway's default stats port; meterway binds it to loopback unless told otherwise.
DEFAULT_STATS_PORT = 15020
DEFAULT_STATS_HOST = "127.0.0.1"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Convert a duration (seconds as a number, or `30s`, `5m`, `1h`...) to seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}; write seconds as a number or a string like 30s, 5m, 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"invalid duration {value!r}; write seconds as a number or a string like 30s, 5m, 1h")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be more than 0")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_ratio(value: Any, field: str) -> float:
    """Convert a sampling value (`true`, `false` or a number from 0.0 to 1.0) to a ratio."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return 1.0 if text == "true" else 0.0
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(
            f"`{field}: {value}` is a CEL expression, which meterway does not evaluate yet; "
            "give true, false or a number from 0.0 to 1.0"
        ) from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"`{field}: {value}` is out of range; give a number from 0.0 to 1.0")
    return ratio


def check_http_url(url: str, what: str) -> str:
    """Return `url` if it is an absolute http(s) URL; raise ValueError naming `what` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid {what} {url!r}; write an absolute URL such as http://127.0.0.1:4317")
    return url


def stats_addr_text(value: Any) -> Any:
    """Read a YAML `off` (which YAML 1.1 loads as false) as the string `off`."""
    return "off" if value is False else value


def parse_stats_addr(value: str | None) -> tuple[str, int] | None:
    """Return (host, port) for `config.statsAddr`, or None for `off`.

    Unset means agentgateway's port 15020 on 127.0.0.1, and so does an empty host (`:15020`):
    the metrics name models and routes, which is private data.
    """
    if value is None:
        return DEFAULT_STATS_HOST, DEFAULT_STATS_PORT
    text = value.strip()
    if text == "off":
        return None
    if text.startswith("unix:"):
        raise ValueError(f"statsAddr {value!r}: unix sockets are not supported by meterway yet; "
                         "use HOST:PORT, e.g. 127.0.0.1:15020, or off")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid statsAddr {value!r}; write HOST:PORT (e.g. 127.0.0.1:15020) or off")
    host = host.strip("[]") or DEFAULT_STATS_HOST
    return host, int(port_text)


class TracingConfig(ConfigModel):
    """`config.tracing`: where and how often request spans are exported over OTLP."""

    # For example http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318 (http).
    otlp_endpoint: str
    # Sent with every export, e.g. an authorization header for a hosted collector.
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    otlp_protocol: Literal["grpc", "http"] = "grpc"
    fields: Opaque | None = None
    # Chance of tracing a request that arrives without a `traceparent`; agentgateway's
    # default is false, so only requests that carry a trace are traced unless this is set.
    random_sampling: str | bool | float | None = None
    # Chance of tracing a request that arrives with a sampled `traceparent`; default true.
    client_sampling: str | bool | float | None = None
    # The OTLP/HTTP path; agentgateway's default is /v1/traces.
    path: str | None = None

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        return check_http_url(value, "otlpEndpoint")

    @field_validator("random_sampling", "client_sampling")
    @classmethod
    def _check_sampling(cls, value: Any, info: Any) -> Any:
        if value is not None:
            parse_ratio(value, to_camel(info.field_name))
        return value

    def random_ratio(self) -> float:
        """Return the sampling ratio for requests without an incoming trace."""
        return 0.0 if self.random_sampling is None else parse_ratio(self.random_sampling, "randomSampling")

    def client_ratio(self) -> float:
        """Return the sampling ratio for requests that continue a sampled incoming trace."""
        return 1.0 if self.client_sampling is None else parse_ratio(self.client_sampling, "clientSampling")

    def export_url(self) -> str:
        """Return the URL spans are sent to: the endpoint, plus the path for OTLP/HTTP."""
        if self.otlp_protocol == "grpc":
            return self.otlp_endpoint
        path = self.path or "/v1/traces"
        return self.otlp_endpoint.rstrip("/") + "/" + path.lstrip("/")


class MetricsConfig(ConfigModel):
    """`config.metrics`: label changes for the Prometheus metrics (not implemented yet)."""

    remove: list[str] = Field(default_factory=list)
    fields: Opaque | None = None


class Webhook(ConfigModel):
    """Where an alert is posted: a JSON body, or ntfy's JSON format when `topic` is set."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    # ntfy's topic; with it the body uses ntfy's fields (topic, title, message, priority, ...).
    topic: str | None = None
    # Seconds one post may take before it is abandoned.
    timeout: Duration = 10.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_http_url(value, "webhook url")


class ErrorRateRule(ConfigModel):
    """Fire when the share of requests whose outcome is not `ok` goes over `threshold`."""

    window: Duration = 300.0
    # A fraction: 0.2 fires above 20% errors.
    threshold: float = Field(gt=0, le=1)
    # Fewer requests than this in the window never fire (and clear a firing alert).
    min_requests: int = Field(default=10, ge=1)


class DailySpendRule(ConfigModel):
    """Fire when the cost of today's requests (UTC) goes over the budget."""

    budget_usd: float = Field(gt=0)


class ProviderFailuresRule(ConfigModel):
    """Fire when one provider fails this many requests in a row (5xx, 429, unreachable, timeout)."""

    consecutive: int = Field(default=5, ge=1)
    # Only this provider id (e.g. `openai`); unset watches each provider separately.
    provider: str | None = None


class RouterFailOpenRule(ConfigModel):
    """Fire when the ext_proc router fails open this many calls in a row."""

    consecutive: int = Field(default=1, ge=1)


class AlertRule(ConfigModel):
    """One `meterway.alerts.rules[]` entry: a condition and where to send its notices."""

    name: str = Field(min_length=1)
    severity: Literal["info", "warning", "critical"] = "warning"
    webhook: Webhook | None = None
    # Overrides `meterway.alerts.suppressFor` for this rule.
    suppress_for: Duration | None = None
    error_rate: ErrorRateRule | None = None
    daily_spend: DailySpendRule | None = None
    provider_failures: ProviderFailuresRule | None = None
    router_fail_open: RouterFailOpenRule | None = None

    @model_validator(mode="after")
    def _check_one(self) -> AlertRule:
        exactly_one(self, ("error_rate", "daily_spend", "provider_failures", "router_fail_open"),
                    "alerts.rules[]")
        return self

    def kind(self) -> str:
        """Return the YAML key of the rule's condition, e.g. `errorRate`."""
        for name in ("error_rate", "daily_spend", "provider_failures", "router_fail_open"):
            if getattr(self, name) is not None:
                return type(self).model_fields[name].alias or name
        raise AssertionError("validated rule without a condition")


class MeterwayAlerts(ConfigModel):
    """`meterway.alerts`: rules that post to a webhook when they fire and when they clear."""

    # The Datasette UI that alert links point at (`meterway ui` serves 127.0.0.1:15000).
    ui_url: str = "http://127.0.0.1:15000"
    # After a notice that a rule fired, the same rule's next firing within this time is not
    # sent again (nor its clearing), so a flapping condition does not flood the receiver.
    suppress_for: Duration = 900.0
    # Used by every rule that has no `webhook` of its own.
    webhook: Webhook | None = None
    rules: list[AlertRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_rules(self) -> MeterwayAlerts:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"alert rule names must be unique; rename {', '.join(duplicates)}")
        for rule in self.rules:
            if rule.webhook is None and self.webhook is None:
                raise ValueError(f"alert rule {rule.name!r} has no webhook; give it `webhook: {{url: ...}}` "
                                 "or set `meterway.alerts.webhook`")
        return self
