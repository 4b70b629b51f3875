"""Fill the Analytics cache in the background when Datasette starts, for files that need it.

A file from before schema version 4 has no narrow summary tables, so its first 30-day view
reads a month of `rollup_hour` and `requests`, which takes several seconds on a small
machine. For such a file, warming computes the 24 h, 7 d and 30 d presets for UTC+00:00 and
for the server's own UTC offset. The UI listens on loopback by default, so its viewer
usually shares the server's clock. Viewers at other offsets see other bucket
edges, which are cached on their first view.

A file with the narrow tables is not warmed: its unfiltered presets read those tables and
use no cache, and warming `rollup_hour` for filtered views would hold the GIL (the histogram
aggregate runs in Python) while the first viewer waits for a page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from datasette import hookimpl
from datasette.database import Database

from .analytics_data import Query, load_analytics
from .log_database import has_log_table, log_database
from .narrow_reads import has_narrow_tables
from .time_range import parse_range

logger = logging.getLogger(__name__)

WARM_PRESETS = ("30d", "7d", "24h")
# Logs with fewer summary rows than this render quickly from a cold cache.
WARM_MIN_ROWS = 50_000


def _offsets() -> list[int]:
    local = (time.localtime().tm_gmtoff or 0) // 60
    return [local, 0] if local else [0]


async def warm(db: Database) -> None:
    """Compute the unfiltered presets once, so their buckets land in the cache."""
    started = time.monotonic()
    for offset in _offsets():
        for preset in WARM_PRESETS:
            args = {"range": preset, "tz": str(offset)}
            await load_analytics(db, Query(parse_range(args)))
    logger.info("analytics cache warmed for %s at offsets %s in %.1f s",
                ", ".join(WARM_PRESETS), _offsets(), time.monotonic() - started)


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("warming the analytics cache failed: %s", task.exception())


@hookimpl
def startup(datasette: Any) -> Any:
    """Start warming the cache in the background, unless the log is small, new or it is off.

    Plugin config `{"plugins": {"meterway": {"warm_cache": false}}}` turns warming off.
    """

    async def start() -> None:
        if (datasette.plugin_config("meterway") or {}).get("warm_cache") is False:
            return
        db = log_database(datasette)
        if db is None or not has_log_table(db) or not await db.table_exists("rollup_hour"):
            return
        if await has_narrow_tables(db):
            return
        size = (await db.execute("SELECT max(rowid) FROM rollup_hour")).first()[0] or 0
        if size < WARM_MIN_ROWS:
            return
        task = asyncio.get_running_loop().create_task(warm(db))
        task.add_done_callback(_report)

    return start
