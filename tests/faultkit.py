"""Helpers shared by the fault and bad-input tests: find a request's row, check an error body.

Each request carries a unique User-Agent, which the gateway stores in `requests.user_agent`,
so a test finds its row even when the client got no `x-meterway-request-id` header (a
connection reset, or an error page that mitmproxy wrote).
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path

import httpx

_counter = itertools.count()
CHAT = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def unique_agent(case: str) -> str:
    """Return a User-Agent value no other request in this test run uses."""
    return f"faults/{case}/{next(_counter)}"


def wait_row(db: Path, user_agent: str, timeout: float = 10.0) -> dict:
    """Wait for the writer thread to store the row of one request, then return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            conn = sqlite3.connect(db)
            conn.row_factory = sqlite3.Row
            try:
                found = conn.execute("select * from requests where user_agent = ?", [user_agent]).fetchall()
            except sqlite3.OperationalError:
                found = []
            finally:
                conn.close()
            if found:
                assert len(found) == 1, f"{len(found)} rows for one request ({user_agent})"
                return dict(found[0])
        time.sleep(0.05)
    raise AssertionError(f"no row with user_agent {user_agent!r} in {db} after {timeout} s")


def count_rows(db: Path, user_agent: str) -> int:
    """Count the rows of one request, to check that a row was written exactly once."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute("select count(*) from requests where user_agent = ?", [user_agent]).fetchone()[0]
    finally:
        conn.close()


def error_of(response: httpx.Response, status: int) -> dict:
    """Check that a response is an OpenAI-style JSON error with `status`; return its `error` object."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:300]}"
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def post_chat(base: str, agent: str, body: bytes | str = CHAT, *, timeout: float = 15.0,
              path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    """Send one chat request with a unique User-Agent and return the response."""
    content = body.encode() if isinstance(body, str) else body
    all_headers = {"content-type": "application/json", "user-agent": agent, **headers}
    return httpx.post(f"{base}{path}", content=content, headers=all_headers, timeout=timeout)
