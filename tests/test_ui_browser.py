"""The UI pages in headless Chromium, driven over the Chrome DevTools Protocol.

Runs `meterway.ui.serve` in a subprocess on a sample log, loads each page, checks for
console errors, drawn charts, totals and links, and saves screenshots. They go to a temporary
folder unless METERWAY_SCREENSHOTS_DIR names one: set it to docs/screenshots to refresh the
README's pictures.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from datasette_plugins.formatting import format_count
from tests.test_ui_plugins import build_sample_log

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("METERWAY_SCREENSHOTS_DIR") or tempfile.mkdtemp(prefix="meterway-shots-"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI; run scripts/install-system-packages", pytrace=False)
    pytest.skip("chromium not installed; run scripts/install-system-packages", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Page:
    """A minimal DevTools client for one page target: navigate, evaluate, screenshot."""

    def __init__(self, ws_url: str) -> None:
        # Entered at once and closed in close(), because one connection serves all tests.
        self._ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=10).__enter__()
        self._ids = itertools.count(1)
        self.errors: list[str] = []
        self._events: list[dict[str, Any]] = []
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.send(method)

    def _note(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(json.dumps(params.get("args"))[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"].get("text", "") + " " + params["entry"].get("url", ""))
        self._events.append(message)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            self._note(message)

    def goto(self, url: str) -> None:
        self._events.clear()
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                state = self.evaluate("document.readyState + ' ' + location.href")
            except RuntimeError:
                # The old document's context goes away while the new one loads.
                time.sleep(0.1)
                continue
            if state.startswith("complete"):
                time.sleep(0.2)  # Let a script's location.replace() start, then re-check.
                if self.evaluate("document.readyState") == "complete":
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not finish loading in 20 s")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        # The Logs page is very long; the top 2,400 px show everything worth seeing.
        height = min(int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)")), 2400)
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=height,
                  deviceScaleFactor=1, mobile=False)
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))
        self.send("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        self._ws.close()


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    db_path = tmp_path_factory.mktemp("ui") / "meterway.db"
    build_sample_log(db_path, rows=300)
    port = _free_port()
    code = f"import sys; from pathlib import Path; from meterway.ui import serve; sys.exit(serve(Path({str(db_path)!r}), port={port}))"
    server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/-/meterway")
        yield f"http://127.0.0.1:{port}", db_path
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    port = _free_port()
    profile = tmp_path_factory.mktemp("chromium-profile")
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
         "--remote-debugging-address=127.0.0.1", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TZ": "UTC"})
    try:
        _wait_http(f"http://127.0.0.1:{port}/json/version")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            targets = [t for t in json.load(response) if t["type"] == "page"]
        client = Page(targets[0]["webSocketDebuggerUrl"])
        yield client
        client.close()
    finally:
        browser.terminate()
        browser.wait(timeout=10)


def test_analytics_page_in_browser(ui_url: tuple[str, Path], page: Page) -> None:
    base, db_path = ui_url
    page.goto(f"{base}/")
    assert "/-/meterway" in page.evaluate("location.href")
    page.goto(f"{base}/-/meterway?range=30d&group=model")
    assert page.errors == []
    charts = page.evaluate("document.querySelectorAll('svg.mw-chart').length")
    bars = page.evaluate("document.querySelectorAll('svg.mw-chart rect.bar').length")
    width = page.evaluate("document.querySelector('svg.mw-chart').getBoundingClientRect().width")
    assert charts == 4
    assert bars > 20
    assert width > 600
    conn = sqlite3.connect(db_path)
    (calls,) = conn.execute("SELECT count(*) FROM requests").fetchone()
    conn.close()
    shown = page.evaluate("document.querySelector('[data-total=Calls] .mw-total-value').textContent")
    assert shown == format_count(calls)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(SCREENSHOTS / "analytics.png")

    page.goto(f"{base}/-/meterway?range=1h&group=status&measure=tokens")
    assert page.errors == []
    page.screenshot(SCREENSHOTS / "analytics-1h-status.png")


def test_links_lead_to_request_page(ui_url: tuple[str, Path], page: Page) -> None:
    base, _ = ui_url
    page.goto(f"{base}/-/meterway?range=30d")
    href = page.evaluate("document.querySelector('.mw-top a[href*=\"/-/meterway/request/\"]').href")
    page.goto(href)
    assert page.errors == []
    assert page.evaluate("document.querySelectorAll('.mw-bubble').length") >= 2
    assert page.evaluate("!!document.querySelector('a[href$=\".mitm\"]')")
    page.screenshot(SCREENSHOTS / "request.png")

    page.goto(f"{base}/-/meterway/request/req00000")
    assert page.errors == []
    # The hostile prompt shows as text and never runs or adds an element.
    assert page.evaluate("document.querySelectorAll('.mw-chat img, .mw-chat script').length") == 0
    assert "<script>" in page.evaluate("document.querySelector('.mw-role-user').textContent")


def test_logs_page_in_browser(ui_url: tuple[str, Path], page: Page) -> None:
    base, _ = ui_url
    page.goto(f"{base}/-/meterway")
    logs = page.evaluate("[...document.querySelectorAll('.mw-nav a')].find(a => a.textContent == 'Logs').href")
    page.goto(logs)
    assert page.errors == []
    assert page.evaluate("document.querySelectorAll('.mw-status-2xx').length") > 0
    assert page.evaluate("!!document.querySelector('.mw-follow input')")
    assert page.evaluate("document.querySelectorAll('.facet-info').length") >= 5
    page.screenshot(SCREENSHOTS / "logs.png")
    first = page.evaluate("document.querySelector('td.col-id a').href")
    page.goto(first)
    assert "/-/meterway/request/" in page.evaluate("location.href")
    assert page.errors == []
