"""Hourly summary rows (`rollup_hour` and its narrow views) and their latency histograms.

The writer groups each batch of request rows by hour and dimension tuple in Python, then
adds every group to its `rollup_hour` row with one upsert. The UI reads these rows for large
time ranges instead of scanning `requests`.

`rollup_hour` has a row per hour and full dimension tuple (about 200 rows an hour on a busy
gateway), too many to sum over a month within Datasette's 1 s query limit. So the same batch
also feeds two narrow tables, derived from its `rollup_hour` groups:
- `rollup_dimension_hour`: per hour, one row per value of each dimension the Analytics page
  groups by (`SUMMARY_DIMENSIONS`), with the same sums as `rollup_hour`. Each request counts
  once under every dimension, so the rows of one dimension add up to the hour's totals.
- `rollup_latency_hour`: per hour, model and provider, the latency histogram as a BLOB
  (see `addons/store_hist.py`).

`latency_hist` is a JSON array of counts of `duration_ms`, aligned with table
`latency_buckets`: bucket `i` counts durations in `(upper[i-1], upper[i]]` (bucket 0 starts at
0), and the last bucket counts everything above the last finite bound. Trailing zero buckets
are left out of the stored array, so a reader treats a missing index as 0.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from addons.store_hist import ADD_FUNCTION as HIST_BLOB_ADD
from addons.store_hist import hist_to_blob, register_hist_functions

HOUR_MS = 3_600_000

# Dimension columns of `rollup_hour`, after `bucket_ms`. NULL is stored as '' so that the
# composite primary key matches (SQLite treats NULLs in a key as distinct).
DIMENSIONS = ("provider", "requested_model", "model", "route", "client", "status_class", "outcome")

# Columns of `rollup_hour` that become `rollup_dimension_hour.dimension`, in the order the
# Analytics page lists them, with their position in a `rollup_hour` key (bucket_ms first).
SUMMARY_DIMENSIONS = ("model", "provider", "route", "client", "status_class")
_KEY_POSITION = {name: 1 + DIMENSIONS.index(name) for name in SUMMARY_DIMENSIONS}

SUM_COLUMNS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced",
    "duration_ms_sum",
    "ttft_ms_sum",
    "ttft_count",
)

_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "total_tokens")

# Log-spaced bounds, 24 per decade (each about 10% above the one before) from 5 ms to about
# 10 minutes. For a smooth distribution the interpolated p50..p99 land within a few percent
# of the exact values (under 3% for a log-normal sample in tests/test_store.py).
_FIRST_BOUND_MS = 5.0
_STEPS_PER_DECADE = 24
_BOUND_COUNT = 123

HIST_FUNCTION = "meterway_hist_add"


@functools.cache
def _default_bounds() -> tuple[float, ...]:
    bounds = []
    for i in range(_BOUND_COUNT):
        upper = _FIRST_BOUND_MS * 10 ** (i / _STEPS_PER_DECADE)
        bounds.append(float(f"{upper:.3g}"))
    return tuple(bounds)


def default_latency_bounds() -> list[float]:
    """Return the finite bucket upper bounds (ms) that a new file gets in `latency_buckets`."""
    return list(_default_bounds())


def status_class(status: int | None) -> str:
    """Return `1xx`..`5xx` for an HTTP status, or `none` when no valid status was sent."""
    if status is None or not 100 <= int(status) <= 599:
        return "none"
    return f"{int(status) // 100}xx"


def merge_hists(left: Sequence[int], right: Sequence[int]) -> list[int]:
    """Add two histograms bucket by bucket; the shorter one counts as zeros past its end."""
    if len(left) < len(right):
        left, right = right, left
    merged = list(left)
    for i, count in enumerate(right):
        merged[i] += count
    return merged


def hist_to_json(hist: Sequence[int]) -> str:
    """Serialise a histogram compactly, leaving out trailing zero buckets."""
    end = len(hist)
    while end and not hist[end - 1]:
        end -= 1
    return json.dumps(list(hist[:end]), separators=(",", ":"))


def _sql_hist_add(stored: str | None, added: str | None) -> str:
    merged = merge_hists(json.loads(stored or "[]"), json.loads(added or "[]"))
    return hist_to_json(merged)


def register_functions(conn: sqlite3.Connection) -> None:
    """Register the SQL functions the rollup upserts use to merge histograms."""
    conn.create_function(HIST_FUNCTION, 2, _sql_hist_add, deterministic=True)
    register_hist_functions(conn)


def percentile_from_hist(
    hist: Sequence[int], q: float, bounds: Sequence[float] | None = None
) -> float | None:
    """Estimate the `q` quantile (0..1) of a latency histogram, in ms.

    Interpolates linearly inside the bucket that contains the rank. The overflow bucket has no
    upper bound, so a rank that falls there returns the last finite bound. Returns None for an
    empty histogram. `bounds` defaults to `default_latency_bounds()`; pass the file's
    `latency_buckets` when reading an older file.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q!r} is outside 0..1; pass 0.95 for p95, not 95")
    uppers = _default_bounds() if bounds is None else bounds
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        if count <= 0:
            continue
        if seen + count >= rank:
            lower = uppers[i - 1] if i > 0 else 0.0
            if i >= len(uppers):
                return float(uppers[-1])
            return lower + (uppers[i] - lower) * (rank - seen) / count
        seen += count
    return float(uppers[-1])


class RollupBatch:
    """Sums of one batch of request rows, grouped by `rollup_hour` key."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = list(bounds)
        self._groups: dict[tuple[Any, ...], tuple[list[float], list[int]]] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, row: Mapping[str, Any]) -> None:
        """Add one request row (column names as in `requests`) to its group."""
        started_ms = int(row["started_ms"])
        requested = row.get("requested_model") or ""
        key = (
            started_ms - started_ms % HOUR_MS,
            row.get("provider") or "",
            requested,
            row.get("routed_model") or requested,
            row.get("route") or "",
            row.get("client") or "",
            status_class(row.get("status")),
            row.get("outcome") or "",
        )
        group = self._groups.get(key)
        if group is None:
            group = ([0] * len(SUM_COLUMNS), [0] * (len(self._bounds) + 1))
            self._groups[key] = group
        sums, hist = group

        sums[0] += 1
        if row.get("outcome") != "ok":
            sums[1] += 1
        for offset, name in enumerate(_TOKEN_COLUMNS, start=2):
            sums[offset] += row.get(name) or 0
        sums[7] += row.get("cost_usd") or 0.0
        if row.get("cost_status") == "unpriced":
            sums[8] += 1

        duration = row.get("duration_ms")
        if duration is not None:
            sums[9] += duration
            hist[bisect_left(self._bounds, duration)] += 1
        ttft = row.get("ttft_ms")
        if ttft is not None:
            sums[10] += ttft
            sums[11] += 1

    def values(self) -> list[tuple[Any, ...]]:
        """Return one `rollup_hour` value tuple per group, in `upsert_sql()` column order."""
        return [(*key, *sums, hist_to_json(hist)) for key, (sums, hist) in self._groups.items()]

    def dimension_values(self) -> list[tuple[Any, ...]]:
        """Return the `rollup_dimension_hour` value tuples of this batch's groups."""
        found: dict[tuple[Any, ...], list[float]] = {}
        for key, (sums, _) in self._groups.items():
            for name, position in _KEY_POSITION.items():
                target = found.get((key[0], name, key[position]))
                if target is None:
                    found[(key[0], name, key[position])] = list(sums)
                else:
                    for i, value in enumerate(sums):
                        target[i] += value
        return [(*key, *sums) for key, sums in found.items()]

    def latency_values(self) -> list[tuple[Any, ...]]:
        """Return the `rollup_latency_hour` value tuples; groups without a duration add none."""
        found: dict[tuple[Any, ...], list[int]] = {}
        model_at, provider_at = _KEY_POSITION["model"], _KEY_POSITION["provider"]
        for key, (_, hist) in self._groups.items():
            if not any(hist):
                continue
            target = found.get((key[0], key[model_at], key[provider_at]))
            if target is None:
                found[(key[0], key[model_at], key[provider_at])] = list(hist)
            else:
                for i, count in enumerate(hist):
                    target[i] += count
        return [(*key, hist_to_blob(hist)) for key, hist in found.items()]

    def upsert(self, conn: sqlite3.Connection, narrow: bool = True) -> None:
        """Add every group to `rollup_hour` and, unless `narrow` is False, the narrow tables.

        Call inside the batch's transaction. Migration step 2 passes False, because the narrow
        tables do not exist yet at that step; step 4 fills them from `rollup_hour`.
        """
        if self._groups:
            conn.executemany(upsert_sql(), self.values())
            if narrow:
                conn.executemany(dimension_upsert_sql(), self.dimension_values())
                conn.executemany(latency_upsert_sql(), self.latency_values())


@functools.cache
def upsert_sql() -> str:
    """Return the statement that inserts a group or adds it to the existing row."""
    key_columns = ("bucket_ms", *DIMENSIONS)
    columns = (*key_columns, *SUM_COLUMNS, "latency_hist")
    placeholders = ", ".join("?" for _ in columns)
    updates = [f"{name} = {name} + excluded.{name}" for name in SUM_COLUMNS]
    updates.append(f"latency_hist = {HIST_FUNCTION}(latency_hist, excluded.latency_hist)")
    return (
        f"INSERT INTO rollup_hour ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {', '.join(updates)}"
    )


@functools.cache
def dimension_upsert_sql() -> str:
    """Return the statement that adds one (hour, dimension, value) row's sums."""
    columns = ("bucket_ms", "dimension", "value", *SUM_COLUMNS)
    placeholders = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{name} = {name} + excluded.{name}" for name in SUM_COLUMNS)
    return (
        f"INSERT INTO rollup_dimension_hour ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT (bucket_ms, dimension, value) DO UPDATE SET {updates}"
    )


def latency_upsert_sql() -> str:
    """Return the statement that adds one (hour, model, provider) histogram BLOB."""
    return (
        "INSERT INTO rollup_latency_hour (bucket_ms, model, provider, latency_hist) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (bucket_ms, model, provider) "
        f"DO UPDATE SET latency_hist = {HIST_BLOB_ADD}(latency_hist, excluded.latency_hist)"
    )
