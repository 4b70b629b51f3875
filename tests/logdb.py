"""Reading the gateway's request log from tests: wait for the writer thread, then query."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

WAIT_SECONDS = 10.0


def query(db: Path, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict]:
    """Run one query on the log; a missing file or table reads as no rows."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    except sqlite3.OperationalError:
        return []  # the writer has not created the schema yet
    finally:
        conn.close()


def wait_for(db: Path, sql: str, params: list[Any] | tuple[Any, ...] = (), count: int = 1,
             timeout: float = WAIT_SECONDS) -> list[dict]:
    """Poll until a query returns at least `count` rows, then return them."""
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = query(db, sql, params)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{sql} {list(params)} returned {len(found)} rows from {db}, "
                         f"expected {count} within {timeout} s")


def wait_row(db: Path, request_id: str, timeout: float = WAIT_SECONDS) -> dict:
    """Wait for the row of one request id (its `x-meterway-request-id`) and return it."""
    return wait_for(db, "select * from requests where id = ?", [request_id], timeout=timeout)[0]
