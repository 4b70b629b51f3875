"""The alerts addon against a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiohttp import web

from addons.alerts import Alerts
from addons.config_load import ConfigError, load_config
from addons.logrow import ROW_KEYS

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.headers: list[dict] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        self.headers.append(dict(request.headers))
        return web.Response(status=self.status)

    def statuses(self, rule: str) -> list[str]:
        return [post["status"] for post in self.posts if post.get("rule", post.get("title", "")) == rule]


@pytest.fixture
async def receiver():
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    app.router.add_post("/", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hooks.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield hooks
    await runner.cleanup()


def make_row(**values) -> dict:
    row = {key: None for key in ROW_KEYS}
    row.update(id="r", provider="openai", status=200, outcome="ok", router_outcome="skipped", cost_usd=0.0)
    row.update(values)
    return row


def make_alerts(tmp_path: Path, rules_yaml: str, url: str, clock: Clock) -> Alerts:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "config:\n  database: {url: 'sqlite://logs/gateway.db'}\nbinds: []\nmeterway:\n  alerts:\n"
        f"    webhook: {{url: '{url}/hook', headers: {{authorization: Bearer s3cret}}}}\n"
        "    suppressFor: 10m\n    rules:\n" + rules_yaml, encoding="utf-8")
    alerts = Alerts(clock=clock)
    alerts.reconfigure(load_config(path))
    return alerts


async def test_error_rate_fires_and_clears(tmp_path: Path, receiver: Receiver):
    clock = Clock()
    alerts = make_alerts(tmp_path, "    - name: errors\n      severity: critical\n"
                                   "      errorRate: {window: 60s, threshold: 0.5, minRequests: 4}\n",
                         receiver.url, clock)
    for outcome in ("ok", "upstream_error", "timeout"):
        alerts.observe(make_row(outcome=outcome))
    await alerts.drain()
    assert receiver.posts == []  # 3 requests are under minRequests

    alerts.observe(make_row(outcome="upstream_unreachable"))  # 3 of 4 failed: 75% > 50%
    alerts.observe(make_row(outcome="gateway_error"))
    await alerts.drain()
    (fired,) = receiver.posts
    assert fired["status"] == "firing"
    assert fired["rule"] == "errors"
    assert fired["severity"] == "critical"
    assert fired["value"] == pytest.approx(0.75)
    assert fired["threshold"] == 0.5
    assert fired["link"].startswith("http://127.0.0.1:15000/gateway/requests?outcome__not=ok&started_ms__gte=")
    assert "3 of 4 requests" in fired["message"]
    assert fired["title"] in fired["text"]
    assert receiver.headers[0]["Authorization"] == "Bearer s3cret"

    clock.now += 61  # the window empties without traffic; the timer's check clears the alert
    alerts.evaluate()
    await alerts.drain()
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved"]
    await alerts.done()


async def test_repeat_within_suppression_not_sent(tmp_path: Path, receiver: Receiver):
    clock = Clock()
    alerts = make_alerts(tmp_path, "    - name: router\n      routerFailOpen: {consecutive: 2}\n",
                         receiver.url, clock)
    for outcome in ("failed_open", "timeout_failed_open", "failed_open"):
        alerts.observe(make_row(router_outcome=outcome))
    alerts.observe(make_row(router_outcome="skipped"))  # no router call: the run goes on
    alerts.observe(make_row(router_outcome="ok"))
    await alerts.drain()
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved"]
    assert receiver.posts[0]["value"] == 2
    assert "router_outcome__in=failed_open%2Ctimeout_failed_open" in receiver.posts[0]["link"]

    clock.now += 300  # fires again 5 minutes later, inside suppressFor (10m): nothing is sent
    for _ in range(2):
        alerts.observe(make_row(router_outcome="failed_open"))
    alerts.observe(make_row(router_outcome="ok"))
    await alerts.drain()
    assert len(receiver.posts) == 2

    clock.now += 601  # past suppressFor: the next firing and its clearing are sent again
    for _ in range(2):
        alerts.observe(make_row(router_outcome="failed_open"))
    alerts.observe(make_row(router_outcome="immediate_response"))
    await alerts.drain()
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved", "firing", "resolved"]
    await alerts.done()


async def test_provider_failures_per_provider(tmp_path: Path, receiver: Receiver):
    clock = Clock()
    alerts = make_alerts(tmp_path, "    - name: down\n      providerFailures: {consecutive: 3}\n",
                         receiver.url, clock)
    alerts.observe(make_row(provider="anthropic", outcome="upstream_error", status=500))
    for row in (make_row(outcome="upstream_error", status=503, error="provider answered 503"),
                make_row(outcome="upstream_error", status=400),  # the client's fault: ignored
                make_row(outcome="timeout", status=502),
                make_row(outcome="client_disconnected", status=None),
                make_row(outcome="upstream_error", status=429, error="provider answered 429: slow down")):
        alerts.observe(row)
    await alerts.drain()
    (fired,) = receiver.posts
    assert fired["key"] == "openai"
    assert fired["title"] == "meterway alert down (openai) firing"
    assert "last error: provider answered 429: slow down" in fired["message"]
    assert "provider=openai" in fired["link"]

    alerts.observe(make_row(outcome="ok"))
    await alerts.drain()
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved"]
    await alerts.done()


async def test_daily_spend_clears_at_midnight(tmp_path: Path, receiver: Receiver):
    clock = Clock()
    alerts = make_alerts(tmp_path, "    - name: budget\n      dailySpend: {budgetUsd: 1.0}\n",
                         receiver.url, clock)
    for _ in range(3):
        alerts.observe(make_row(cost_usd=0.4))
    alerts.observe(make_row(cost_usd=None, outcome="upstream_error"))
    await alerts.drain()
    (fired,) = receiver.posts
    assert fired["value"] == pytest.approx(1.2)
    assert fired["threshold"] == 1.0
    midnight_ms = int(datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp() * 1000)
    assert f"started_ms__gte={midnight_ms}" in fired["link"]

    clock.now += 12 * 3600 + 1  # the next UTC day
    alerts.evaluate()
    await alerts.drain()
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved"]
    await alerts.done()


async def test_ntfy_format(tmp_path: Path, receiver: Receiver):
    path = tmp_path / "gw.yaml"
    path.write_text(
        "binds: []\nmeterway:\n  alerts:\n    rules:\n    - name: router\n      severity: critical\n"
        f"      webhook: {{url: '{receiver.url}/', topic: meterway-alerts}}\n"
        "      routerFailOpen: {}\n", encoding="utf-8")
    alerts = Alerts()
    alerts.reconfigure(load_config(path))
    alerts.observe(make_row(router_outcome="failed_open"))
    await alerts.drain()
    (posted,) = receiver.posts
    assert posted["topic"] == "meterway-alerts"
    assert posted["priority"] == 5
    assert posted["title"] == "meterway alert router firing"
    assert posted["click"].startswith("http://127.0.0.1:15000/meterway/requests?")
    assert set(posted) == {"topic", "title", "message", "priority", "tags", "click"}
    await alerts.done()


async def test_failed_post_logged_once(tmp_path: Path, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens
    clock = Clock()
    alerts = make_alerts(tmp_path, "    - name: router\n      routerFailOpen: {}\n"
                                   "      suppressFor: 1s\n", f"http://127.0.0.1:{port}", clock)
    caplog.set_level(logging.ERROR, logger="addons.alerts")
    for _ in range(3):
        alerts.observe(make_row(router_outcome="failed_open"))
        alerts.observe(make_row(router_outcome="ok"))
        clock.now += 2
    await alerts.drain()
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert "s3cret" not in failures[0].getMessage()
    assert "/hook" not in failures[0].getMessage()
    await alerts.done()


def test_check_rejects_bad_rules(tmp_path: Path):
    path = tmp_path / "gw.yaml"
    path.write_text(
        "binds: []\nmeterway:\n  alerts:\n    rules:\n"
        "    - name: a\n      webhook: {url: 'http://127.0.0.1:9/'}\n"
        "      errorRate: {threshold: 0.1}\n      dailySpend: {budgetUsd: 3}\n"
        "    - name: b\n      webhook: {url: 'http://127.0.0.1:9/'}\n"
        "      errorRate: {window: soon, threshold: 0.1}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    problems = raised.value.problems
    assert any("rules[0]" in p and "set exactly one of" in p for p in problems), problems
    assert any("rules[1].errorRate.window" in p and "invalid duration 'soon'" in p for p in problems), problems


def test_check_requires_a_webhook(tmp_path: Path):
    path = tmp_path / "gw.yaml"
    path.write_text("binds: []\nmeterway:\n  alerts:\n    rules:\n    - name: a\n      routerFailOpen: {}\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="alert rule 'a' has no webhook"):
        load_config(path)
