"""Turn the Analytics page's range parameters into UTC epoch-millisecond bounds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
PRESETS = {"1h": HOUR_MS, "24h": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}
DEFAULT_PRESET = "24h"
# Ranges up to this span are read from `requests`: exact, with 5-minute buckets. Longer
# ranges are read from `rollup_hour` and so widen to whole UTC hours.
RAW_SPAN_LIMIT_MS = 3 * HOUR_MS
MAX_OFFSET_MINUTES = 14 * 60


class RangeError(ValueError):
    """A custom range whose bounds cannot be read or are in the wrong order."""


@dataclass(frozen=True)
class TimeRange:
    """A half-open UTC range [start_ms, end_ms) and how the page buckets it."""

    start_ms: int
    end_ms: int
    preset: str | None
    offset_minutes: int
    bucket_ms: int

    @property
    def uses_raw_rows(self) -> bool:
        """Tell whether this range is read from `requests` rather than `rollup_hour`."""
        return self.end_ms - self.start_ms <= RAW_SPAN_LIMIT_MS

    def local_bucket(self, epoch_ms: int) -> int:
        """Return the start of the viewer-local bucket that contains `epoch_ms`."""
        offset_ms = self.offset_minutes * 60_000
        return (epoch_ms + offset_ms) // self.bucket_ms * self.bucket_ms - offset_ms

    def buckets(self) -> list[int]:
        """List every bucket start from the range's start to its end."""
        first = self.local_bucket(self.start_ms)
        return list(range(first, self.end_ms, self.bucket_ms))


def parse_offset(raw: str | None) -> int:
    """Read the browser's UTC offset in minutes east of UTC; 0 when absent or invalid."""
    try:
        offset = int(raw or 0)
    except ValueError:
        return 0
    return max(-MAX_OFFSET_MINUTES, min(MAX_OFFSET_MINUTES, offset))


def bucket_size(span_ms: int) -> int:
    """Choose a bucket width that gives between about 12 and 72 bars for a span."""
    if span_ms <= RAW_SPAN_LIMIT_MS:
        return 5 * 60_000
    if span_ms <= 2 * DAY_MS:
        return HOUR_MS
    if span_ms <= 10 * DAY_MS:
        return 6 * HOUR_MS
    return DAY_MS


def _parse_local(value: str, offset_minutes: int, name: str) -> int:
    zone = timezone(timedelta(minutes=offset_minutes))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RangeError(
            f"{name}={value!r} is not a date or time; use the form 2026-12-01 or 2026-12-01T08:30"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp() * 1000)


def parse_range(args: dict[str, str], now_ms: int | None = None) -> TimeRange:
    """Build the range from `range` (a preset) or `from`/`to` (viewer-local times) and `tz`.

    Ranges longer than the raw-row limit are widened outwards to whole UTC hours, so the
    hourly summary table covers exactly the range shown.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    offset = parse_offset(args.get("tz"))
    start_raw, end_raw = (args.get("from") or "").strip(), (args.get("to") or "").strip()
    preset: str | None = None

    if start_raw or end_raw:
        start_ms = _parse_local(start_raw, offset, "from") if start_raw else now_ms - DAY_MS
        end_ms = _parse_local(end_raw, offset, "to") if end_raw else now_ms
        if len(end_raw) == 10:
            end_ms += DAY_MS  # A bare date as `to` includes that whole day.
        if end_ms <= start_ms:
            raise RangeError(f"from={start_raw!r} is not before to={end_raw!r}; swap them")
    else:
        preset = args.get("range") or DEFAULT_PRESET
        if preset not in PRESETS:
            raise RangeError(f"range={preset!r} is not one of {', '.join(PRESETS)}")
        span = PRESETS[preset]
        if span <= RAW_SPAN_LIMIT_MS:
            end_ms = now_ms + 1
        else:
            end_ms = (now_ms // HOUR_MS + 1) * HOUR_MS
        start_ms = end_ms - span

    if end_ms - start_ms > RAW_SPAN_LIMIT_MS:
        start_ms = start_ms // HOUR_MS * HOUR_MS
        end_ms = -(-end_ms // HOUR_MS) * HOUR_MS
    return TimeRange(start_ms, end_ms, preset, offset, bucket_size(end_ms - start_ms))
