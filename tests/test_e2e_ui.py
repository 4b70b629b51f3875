"""The UI on a request log that a real gateway wrote, in headless Chromium.

A gateway process serves three routes (OpenAI and Gemini stand-ins, priced, and an Ollama
stand-in, local) behind the stand-in ext_proc router. The module sends plain and streamed
requests, an upstream error and one request while the router is down (it fails open), then
starts `meterway ui` on the log and checks Analytics, Logs and the request page against SQL.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from mitmproxy.io import FlowReader

from datasette_plugins.formatting import format_cost, format_count
from tests.gateway_process import REPO, GatewayProcess, free_port
from tests.routerthread import ThreadedRouter
from tests.standins.gemini_api import GeminiStandIn
from tests.standins.ollama_api import OllamaStandIn
from tests.standins.openai_api import OpenAIStandIn
from tests.test_ui_browser import Page, _wait_http
from tests.test_ui_browser import page as page  # noqa: F401 (the shared Chromium fixture)

OPENAI_KEY = "sk-canary-ui-openai-61d0f3a9"
GEMINI_KEY = "AIza-canary-ui-gemini-8c2e7b4d"
CLIENT_KEY = "sk-client-canary-ui-5a9e"
PROMPT = "Name three colours of the Dutch flag"

CONFIG = """\
policies:
- name:
    name: router
    namespace: default
  target:
    gateway:
      gatewayName: default
      gatewayNamespace: default
  phase: gateway
  policy:
    extProc:
      host: {router}
      processingOptions:
        requestHeaderMode: send
        requestBodyMode: buffered
        responseHeaderMode: skip
        responseBodyMode: none
      failureMode: failOpen
binds:
- port: {port}
  listeners:
  - routes:
    - name: openai
      matches:
      - headers:
        - name: x-route
          value:
            exact: openai
      policies:
        ai:
          modelAliases:
            MoM: gpt-4o-mini
      backends:
      - ai:
          name: openai
          provider:
            openAI: {{}}
        policies:
          backendAuth:
            key: $OPENAI_API_KEY
    - name: gemini
      matches:
      - headers:
        - name: x-route
          value:
            exact: gemini
      policies:
        ai:
          modelAliases:
            MoM: gemini-2.5-flash
      backends:
      - ai:
          name: gemini
          provider:
            gemini: {{}}
        policies:
          backendAuth:
            key: $GEMINI_API_KEY
    - name: local
      policies:
        ai:
          modelAliases:
            MoM: qwen2.5-coder:7b
      backends:
      - ai:
          name: ollama
          provider:
            openAI: {{}}
          hostOverride: localhost:11434
config:
  database:
    url: sqlite://log.db
  statsAddr: "off"
  readinessAddr: "off"
"""


@dataclass
class Log:
    db: Path
    base: str
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def fetch(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return response.read()


def ask(client: openai.OpenAI, route: str, prompt: str, stream: bool = False) -> tuple[str, str]:
    """Send one chat completion on `route`; return the request id and the answer text."""
    headers = {"x-route": route}
    messages = [{"role": "user", "content": prompt}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model="MoM", messages=messages, stream=True, extra_headers=headers) as raw:
            request_id = raw.headers["x-meterway-request-id"]
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return request_id, text
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="MoM", messages=messages, extra_headers=headers)
    except openai.APIStatusError as error:
        return error.response.headers["x-meterway-request-id"], ""
    return raw.headers["x-meterway-request-id"], raw.parse().choices[0].message.content or ""


def send_traffic(port: int, router: ThreadedRouter, upstream: OpenAIStandIn) -> dict[str, tuple[str, str]]:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=CLIENT_KEY, max_retries=0)
    sent = {
        "plain": ask(client, "openai", PROMPT),
        "stream": ask(client, "openai", "Stream a short poem", stream=True),
        "gemini": ask(client, "gemini", "Translate good morning to French"),
        "gemini_stream": ask(client, "gemini", "Count to five", stream=True),
        "local": ask(client, "local", "Write python code"),
    }
    upstream.next_error = (500, None, None)
    sent["error"] = ask(client, "openai", "This one fails upstream")
    router.stop()
    try:
        sent["fail_open"] = ask(client, "local", "Sent while the router is down")
    finally:
        router.start()
    return sent


def wait_rows(db: Path, count: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            conn = sqlite3.connect(db)
            (found,) = conn.execute("select count(*) from requests").fetchone()
            conn.close()
            if found >= count:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the request log {db} did not get {count} rows in 15 s")


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    folder = tmp_path_factory.mktemp("e2e-ui")
    standins = upstream, gemini, ollama = OpenAIStandIn(), GeminiStandIn(), OllamaStandIn()
    for standin in standins:
        standin.start_in_thread()
    router = ThreadedRouter("keywords").start()
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(CONFIG.format(router=router.target, port=port))
    gateway = GatewayProcess(
        config, [port],
        upstreams={"api.openai.com:443": upstream.url,
                   "generativelanguage.googleapis.com:443": gemini.url,
                   "localhost:11434": ollama.url},
        env={"OPENAI_API_KEY": OPENAI_KEY, "GEMINI_API_KEY": GEMINI_KEY},
    )
    try:
        gateway.start()
        sent = send_traffic(port, router, upstream)
        wait_rows(folder / "log.db", len(sent))
    finally:
        gateway.stop()
        router.close()
        for standin in standins:
            standin.stop_in_thread()

    ui_port = free_port()
    code = ("import sys; from pathlib import Path; from meterway.ui import serve; "
            f"sys.exit(serve(Path({str(folder / 'log.db')!r}), port={ui_port}))")
    server = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        base = f"http://127.0.0.1:{ui_port}"
        _wait_http(f"{base}/-/meterway")
        yield Log(folder / "log.db", base, sent)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_log_has_every_case(log: Log) -> None:
    rows = dict(log.query("select id, route || ' ' || status || ' ' || outcome || ' ' || router_outcome "
                          "from requests"))
    assert len(rows) == len(log.sent)
    assert rows[log.sent["plain"][0]] == "openai 200 ok ok"
    assert rows[log.sent["gemini_stream"][0]] == "gemini 200 ok ok"
    assert rows[log.sent["error"][0]] == "openai 500 upstream_error ok"
    assert rows[log.sent["fail_open"][0]] == "local 200 ok failed_open"


def test_analytics_totals_equal_sql(log: Log, page: Page) -> None:
    page.goto(f"{log.base}/-/meterway?range=1h")
    assert page.errors == []
    ((calls, tokens, cost, errors),) = log.query(
        "select count(*), sum(total_tokens), sum(cost_usd), sum(outcome != 'ok') from requests")
    assert cost > 0
    shown = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('[data-total]')].map("
        "e => [e.dataset.total, e.querySelector('.mw-total-value').textContent.trim()]))")
    assert shown["Calls"] == format_count(calls)
    assert shown["Tokens"] == format_count(tokens)
    assert shown["Cost"] == format_cost(cost)
    note = page.evaluate("document.querySelector('[data-total=Calls] .mw-total-note').textContent")
    assert errors == 1
    assert note == "1 error"

    assert page.evaluate("document.querySelectorAll('svg.mw-chart').length") == 4
    assert page.evaluate("document.querySelectorAll('svg.mw-chart rect.bar').length") > 0
    assert page.evaluate("document.querySelector('svg.mw-chart').getBoundingClientRect().width") > 600
    legend = page.evaluate("[...document.querySelectorAll('.mw-legend li')].map(li => li.textContent.trim())")
    for (model,) in log.query("select distinct routed_model from requests"):
        assert model in legend


def test_analytics_group_and_measure(log: Log, page: Page) -> None:
    page.goto(f"{log.base}/-/meterway?range=1h&group=provider&measure=cost")
    assert page.errors == []
    legend = page.evaluate("[...document.querySelectorAll('.mw-legend li')].map(li => li.textContent.trim())")
    assert "gcp.gemini" in legend
    assert "openai" in legend


def test_logs_show_rendered_cells(log: Log, page: Page) -> None:
    page.goto(f"{log.base}/-/meterway")
    logs = page.evaluate("[...document.querySelectorAll('.mw-nav a')].find(a => a.textContent == 'Logs').href")
    page.goto(logs)
    assert page.errors == []
    ids = page.evaluate("[...document.querySelectorAll('td.col-id a')].map(a => a.textContent)")
    assert sorted(ids) == sorted(request_id for request_id, _ in log.sent.values())
    assert page.evaluate("document.querySelectorAll('td.col-status .mw-status-2xx').length") == len(log.sent) - 1
    assert page.evaluate("document.querySelectorAll('td.col-status .mw-status-5xx').length") == 1
    models = page.evaluate("[...document.querySelectorAll('td.col-requested_model')].map(td => td.textContent.trim())")
    assert "MoM → gpt-4o-mini" in models
    assert "MoM → gemini-2.5-flash" in models

    plain_id = log.sent["plain"][0]
    ((cost, duration),) = log.query("select cost_usd, duration_ms from requests where id = ?", plain_id)
    row = f"[...document.querySelectorAll('tbody tr')].find(tr => tr.querySelector('td.col-id').textContent.trim() == '{plain_id}')"
    assert page.evaluate(f"{row}.querySelector('td.col-cost_usd').textContent.trim()") == format_cost(cost)
    assert page.evaluate(f"{row}.querySelector('td.col-duration_ms span').title") == f"{duration} ms"

    page.goto(page.evaluate(f"{row}.querySelector('td.col-id a').href"))
    assert page.evaluate("location.pathname") == f"/-/meterway/request/{plain_id}"
    assert page.errors == []


def test_request_page_shows_conversation(log: Log, page: Page) -> None:
    request_id, answer = log.sent["plain"]
    assert answer
    page.goto(f"{log.base}/-/meterway/request/{request_id}")
    assert page.errors == []
    assert PROMPT in page.evaluate("document.querySelector('.mw-role-user').textContent")
    assert answer in page.evaluate("document.querySelector('.mw-role-assistant').textContent")
    body = page.evaluate("document.body.innerText")
    assert OPENAI_KEY not in body
    assert CLIENT_KEY not in body

    stream_id, streamed = log.sent["gemini_stream"]
    page.goto(f"{log.base}/-/meterway/request/{stream_id}")
    assert page.errors == []
    assert streamed in page.evaluate("document.querySelector('.mw-role-assistant').textContent")
    assert "streamed" in page.evaluate("document.querySelector('h1 + p').textContent")

    fail_open_id, _ = log.sent["fail_open"]
    ((router_error,),) = log.query("select router_error from requests where id = ?", fail_open_id)
    assert router_error
    page.goto(f"{log.base}/-/meterway/request/{fail_open_id}")
    facts = page.evaluate("Object.fromEntries([...document.querySelectorAll('.mw-facts dt')].map("
                          "dt => [dt.textContent.trim(), dt.nextElementSibling.textContent.trim()]))")
    assert facts["Router outcome"].startswith("failed_open")
    assert facts["Router error"] == router_error
    assert facts["Route"] == "local"

    page.goto(f"{log.base}/-/meterway/request/{request_id}")
    page.goto(page.evaluate("[...document.querySelectorAll('a')].find(a => a.textContent == 'Show in Logs').href"))
    assert page.errors == []
    assert request_id in page.evaluate("document.body.innerText")


def test_mitm_download_reads_back(log: Log, page: Page) -> None:
    request_id, _ = log.sent["plain"]
    page.goto(f"{log.base}/-/meterway/request/{request_id}")
    href = page.evaluate("document.querySelector('a[href$=\".mitm\"]').getAttribute('href')")
    assert href == f"/-/meterway/request/{request_id}.mitm"

    data = log.fetch(href)
    flows = list(FlowReader(io.BytesIO(data)).stream())
    assert len(flows) == 1
    flow = flows[0]
    assert PROMPT.encode() in flow.request.content
    assert flow.request.path == "/v1/chat/completions"
    assert flow.response is not None
    assert flow.response.status_code == 200
    for secret in (OPENAI_KEY, GEMINI_KEY, CLIENT_KEY):
        assert secret.encode() not in data, secret
