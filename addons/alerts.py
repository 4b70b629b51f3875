"""The alerts addon: `meterway.alerts` rules that post to a webhook when they fire and clear.

CostLog calls `observe(row)` with each finished row; a timer re-checks the rules so that
windows expire and the day rolls over without traffic. A rule notifies once when it starts
firing and once when it clears. After a firing notice, the rule's next firing within
`suppressFor` is not sent, nor is its clearing. Posts run as background tasks with a timeout,
off the request path; failures are logged at most once a minute per rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from addons.alert_rules import Condition, evaluator_for
from addons.config_monitoring import AlertRule, MeterwayAlerts, Webhook
from addons.ratelog import LogThrottle

logger = logging.getLogger(__name__)

NTFY_PRIORITY = {"info": 3, "warning": 4, "critical": 5}


def _origin(url: str) -> str:
    # The path can be a secret (an ntfy topic, a Slack hook token), so logs show only this.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass
class _KeyState:
    firing: bool = False
    # Whether a firing notice was sent for the current firing, so its clearing is sent too.
    notified: bool = False
    last_notice: float | None = None


class Alerts:
    """Addon: evaluates the alert rules on each row and on a timer, and sends notices."""

    def __init__(self, config: Any | None = None, *, clock: Callable[[], float] = time.time,
                 tick_seconds: float = 5.0) -> None:
        self.settings = MeterwayAlerts()
        self.database_name = "meterway"
        self._clock = clock
        self._tick_seconds = tick_seconds
        self._rules: list[tuple[AlertRule, Any]] = []
        self._states: dict[tuple[str, str], _KeyState] = {}
        self._tasks: set[asyncio.Task] = set()
        self._ticker: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._throttle = LogThrottle(60.0)
        self._config = config
        if config is not None:
            config.on_reload(self.reconfigure)

    def reconfigure(self, gateway: Any) -> None:
        """Take the rules from a newly loaded config; a rule's state restarts."""
        self.settings = gateway.meterway.alerts
        path = gateway.database_path()
        if path is not None:
            self.database_name = path.stem  # Datasette names a database after its file
        self._rules = [(rule, evaluator_for(rule)) for rule in self.settings.rules]
        workers = self._config.worker[1] if self._config is not None else 1
        if self._rules and workers > 1:
            # Each worker gets only its share of the requests, so budgets and counts would be
            # wrong, and every worker would send the same notice. `meterway run` refuses this
            # at start; a reload that adds rules gets this error instead.
            logger.error("meterway.alerts is ignored: the gateway runs as %d worker processes, and "
                         "alerts need one; run `meterway run` without --workers to use them", workers)
            self._rules = []
        self._states.clear()
        if self._rules:
            logger.info("alerts: %d rule(s): %s", len(self._rules), ", ".join(r.name for r, _ in self._rules))

    def running(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_seconds)
            self.evaluate()

    def observe(self, row: dict[str, Any]) -> None:
        """Feed one finished request log row to the rules; called by CostLog on the event loop."""
        if not self._rules:
            return
        now = self._clock()
        for rule, evaluator in self._rules:
            try:
                evaluator.observe(row, now)
            except Exception:  # an alerting bug must never fail the request or other observers
                logger.exception("alert rule %s: reading request %s failed", rule.name, row.get("id"))
        self.evaluate(now)

    def evaluate(self, now: float | None = None) -> None:
        """Check every rule and send a notice for each key that started firing or cleared."""
        now = self._clock() if now is None else now
        for rule, evaluator in self._rules:
            for key, condition in evaluator.check(now).items():
                self._transition(rule, key, condition, now)

    def _transition(self, rule: AlertRule, key: str, condition: Condition, now: float) -> None:
        state = self._states.setdefault((rule.name, key), _KeyState())
        if condition.firing == state.firing:
            return
        state.firing = condition.firing
        if condition.firing:
            suppress_for = rule.suppress_for or self.settings.suppress_for
            if state.last_notice is not None and now - state.last_notice < suppress_for:
                logger.info("alert %s%s fired again within %g s of its last notice; not sent",
                            rule.name, f" ({key})" if key else "", suppress_for)
                state.notified = False
                return
            state.notified = True
            state.last_notice = now
            self._send(rule, key, condition, "firing")
        elif state.notified:
            state.notified = False
            self._send(rule, key, condition, "resolved")

    def _send(self, rule: AlertRule, key: str, condition: Condition, status: str) -> None:
        webhook = rule.webhook or self.settings.webhook
        body = self.body(rule, key, condition, status)
        logger.warning("alert %s: %s", body["title"], body["message"])
        if webhook is None:  # the config model requires one; kept for rules built in code
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.error("alert %s: no event loop to post the notice from", rule.name)
            return
        task = loop.create_task(self._post(rule, webhook, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def body(self, rule: AlertRule, key: str, condition: Condition, status: str) -> dict[str, Any]:
        """Build the JSON notice for a rule's key going to `status` (`firing` or `resolved`)."""
        subject = f"{rule.name} ({key})" if key else rule.name
        title = f"meterway alert {subject} {status}"
        link = f"{self.settings.ui_url.rstrip('/')}/{self.database_name}/requests?{condition.query}"
        return {
            "title": title,
            "message": condition.message,
            "severity": rule.severity,
            "status": status,
            "rule": rule.name,
            "kind": rule.kind(),
            "key": key or None,
            "value": condition.value,
            "threshold": condition.threshold,
            "link": link,
            # Slack-compatible receivers show `text` only.
            "text": f"{title}: {condition.message}\n{link}",
        }

    @staticmethod
    def ntfy_body(webhook: Webhook, body: dict[str, Any]) -> dict[str, Any]:
        """Convert a notice to ntfy's JSON publishing format, for a webhook with a `topic`."""
        return {
            "topic": webhook.topic,
            "title": body["title"],
            "message": body["message"],
            "priority": NTFY_PRIORITY[body["severity"]] if body["status"] == "firing" else 3,
            "tags": ["rotating_light" if body["status"] == "firing" else "white_check_mark"],
            "click": body["link"],
        }

    async def _post(self, rule: AlertRule, webhook: Webhook, body: dict[str, Any]) -> None:
        payload = self.ntfy_body(webhook, body) if webhook.topic else body
        if self._client is None:
            self._client = httpx.AsyncClient()
        try:
            response = await self._client.post(webhook.url, json=payload, headers=webhook.headers,
                                               timeout=webhook.timeout)
            problem = None if response.status_code < 400 else f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            return
        held = self._throttle.ready(rule.name)
        if held is not None:
            logger.error("alert %s: posting the %s notice to %s failed (%s; %d more failure(s) held back "
                         "in the last minute); check the webhook url and that the receiver runs",
                         rule.name, body["status"], _origin(webhook.url), problem, held)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait up to `timeout` seconds for the notices being posted."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def done(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.drain()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
