"""Find the database that contains the gateway's request log among those Datasette serves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlite3
import time

from datasette.database import Database

if TYPE_CHECKING:  # datasette.app imports this package while it loads plugins
    from datasette.app import Datasette

LOG_TABLE = "requests"
_RECHECK_SECONDS = 5.0
# Database name -> (contains the log, when that was checked). A found log stays found.
_seen: dict[str, tuple[bool, float]] = {}


def has_log_table(db: Database) -> bool:
    """Tell whether a database has the `requests` table, caching the result briefly.

    The result is cached because metadata lookups call this many times per page, and
    re-checked after a few seconds while it is False, because the gateway creates the
    table on its first start.
    """
    known = _seen.get(db.name)
    if known and (known[0] or time.monotonic() - known[1] < _RECHECK_SECONDS):
        return known[0]
    found = False
    if db.path and not db.is_memory:
        try:
            conn = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True)
            try:
                found = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LOG_TABLE,)
                ).fetchone() is not None
            finally:
                conn.close()
        except sqlite3.Error:
            found = False
    _seen[db.name] = (found, time.monotonic())
    return found


def log_database(datasette: Datasette) -> Database | None:
    """Return the first served database that contains the log, else the first file database."""
    candidates = [db for name, db in datasette.databases.items()
                  if not db.is_memory and name != "_internal"]
    for db in candidates:
        if has_log_table(db):
            return db
    return candidates[0] if candidates else None
