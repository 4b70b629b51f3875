"""The conditions of `meterway.alerts.rules[]`, evaluated from request log rows.

Each evaluator takes rows with `observe(row, now)` and returns, from `check(now)`, one
`Condition` per alert key: a rule watching each provider has one key per provider, the other
rules have the single key "". Times are epoch seconds. The evaluators only keep counters and
a window of recent rows, so they cost little on the event loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from addons.config_monitoring import AlertRule

FAIL_OPEN = ("failed_open", "timeout_failed_open")
ROUTER_OK = ("ok", "immediate_response")


@dataclass(frozen=True)
class Condition:
    """The state of one alert key: whether it fires, the measured value and what to say."""

    firing: bool
    value: float | None
    threshold: float
    message: str
    # Query string of the UI's requests table that lists the matching rows.
    query: str


def provider_failed(row: dict[str, Any]) -> bool:
    """Tell whether a row is the provider's failure: unreachable, timed out, 5xx or 429."""
    outcome = row.get("outcome")
    if outcome in ("upstream_unreachable", "timeout"):
        return True
    status = row.get("status")
    return outcome == "upstream_error" and (status is None or status >= 500 or status == 429)


def _utc_day_start(now: float) -> float:
    moment = datetime.fromtimestamp(now, tz=timezone.utc)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class ErrorRate:
    """The share of requests whose outcome is not `ok` over a sliding window."""

    def __init__(self, rule: AlertRule) -> None:
        self.settings = rule.error_rate
        self._rows: deque[tuple[float, bool]] = deque()
        self._errors = 0

    def observe(self, row: dict[str, Any], now: float) -> None:
        failed = row.get("outcome") != "ok"
        self._rows.append((now, failed))
        self._errors += failed

    def check(self, now: float) -> dict[str, Condition]:
        window = self.settings.window
        while self._rows and self._rows[0][0] <= now - window:
            _, failed = self._rows.popleft()
            self._errors -= failed
        total = len(self._rows)
        rate = self._errors / total if total else 0.0
        enough = total >= self.settings.min_requests
        query = urlencode({"outcome__not": "ok", "started_ms__gte": int((now - window) * 1000)})
        message = (f"{self._errors} of {total} requests in the last {window:g} s failed "
                   f"({rate:.0%}; threshold {self.settings.threshold:.0%})")
        if not enough:
            message += f"; fewer than {self.settings.min_requests} requests, so the rule does not fire"
        return {"": Condition(enough and rate > self.settings.threshold, rate, self.settings.threshold,
                              message, query)}


class DailySpend:
    """The cost of today's requests, in USD; the day is the UTC day and restarts at midnight."""

    def __init__(self, rule: AlertRule) -> None:
        self.budget = rule.daily_spend.budget_usd
        self._day_start = 0.0
        self.spend = 0.0

    def _roll(self, now: float) -> None:
        day_start = _utc_day_start(now)
        if day_start != self._day_start:
            self._day_start = day_start
            self.spend = 0.0

    def observe(self, row: dict[str, Any], now: float) -> None:
        self._roll(now)
        self.spend += row.get("cost_usd") or 0.0

    def check(self, now: float) -> dict[str, Condition]:
        self._roll(now)
        query = urlencode({"started_ms__gte": int(self._day_start * 1000), "_sort_desc": "cost_usd"})
        message = f"spend today (UTC) is ${self.spend:.4f}; the budget is ${self.budget:.4f}"
        return {"": Condition(self.spend > self.budget, self.spend, self.budget, message, query)}


class ProviderFailures:
    """Consecutive failed requests per provider; a successful request ends the run."""

    def __init__(self, rule: AlertRule) -> None:
        self.settings = rule.provider_failures
        self._runs: dict[str, int] = {}
        self._last_error: dict[str, str] = {}

    def observe(self, row: dict[str, Any], now: float) -> None:
        provider = row.get("provider")
        if not provider or (self.settings.provider and provider != self.settings.provider):
            return
        if provider_failed(row):
            self._runs[provider] = self._runs.get(provider, 0) + 1
            self._last_error[provider] = row.get("error") or row.get("outcome") or ""
        elif row.get("outcome") == "ok":
            self._runs[provider] = 0
        # Other outcomes (client errors, disconnects) say nothing about the provider's health.

    def check(self, now: float) -> dict[str, Condition]:
        limit = self.settings.consecutive
        conditions = {}
        for provider, run in self._runs.items():
            message = (f"provider {provider} failed {run} request(s) in a row (alert at {limit}); "
                       f"last error: {self._last_error.get(provider) or 'none'}")
            if run == 0:
                message = f"provider {provider} answered a request successfully"
            query = urlencode({"provider": provider, "outcome__not": "ok"})
            conditions[provider] = Condition(run >= limit, float(run), float(limit), message, query)
        return conditions


class RouterFailOpen:
    """Consecutive router calls that failed open; a successful call ends the run."""

    def __init__(self, rule: AlertRule) -> None:
        self.limit = rule.router_fail_open.consecutive
        self.run = 0

    def observe(self, row: dict[str, Any], now: float) -> None:
        outcome = row.get("router_outcome")
        if outcome in FAIL_OPEN:
            self.run += 1
        elif outcome in ROUTER_OK:
            self.run = 0

    def check(self, now: float) -> dict[str, Condition]:
        message = (f"the router failed open on {self.run} call(s) in a row (alert at {self.limit}); "
                   "those requests went upstream without routing")
        if self.run == 0:
            message = "router calls succeed again"
        query = urlencode({"router_outcome__in": ",".join(FAIL_OPEN)})
        return {"": Condition(self.run >= self.limit, float(self.run), float(self.limit), message, query)}


EVALUATORS = {
    "errorRate": ErrorRate,
    "dailySpend": DailySpend,
    "providerFailures": ProviderFailures,
    "routerFailOpen": RouterFailOpen,
}


def evaluator_for(rule: AlertRule) -> Any:
    """Create the evaluator of a rule's condition."""
    return EVALUATORS[rule.kind()](rule)
