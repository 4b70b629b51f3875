"""Small statistics helpers shared by the benchmark modules."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Return the nearest-rank percentile of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(value: float | None, base: float | None) -> float | None:
    """Return value / base, or None when either is missing or the base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base
