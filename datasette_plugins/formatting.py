"""Format numbers for people: counts, tokens, dollars, durations and times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def format_count(value: float | int | None) -> str:
    """Format a count with thousands separators, or an en dash for None."""
    if value is None:
        return "–"
    return f"{int(round(value)):,}"


def format_compact(value: float | int | None) -> str:
    """Format a number shortly (1.2k, 3.4M) for chart axes and labels."""
    if value is None:
        return "–"
    size = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def format_cost(value: float | None) -> str:
    """Format dollars with enough digits that small per-request costs stay visible."""
    if value is None:
        return "–"
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.2f}"
    if abs(value) >= 0.01:
        return f"${value:.4f}".rstrip("0").rstrip(".")
    return f"${value:.6f}".rstrip("0")


def format_duration(value_ms: float | None) -> str:
    """Format milliseconds as `850 ms` below a second and `1.23 s` above."""
    if value_ms is None:
        return "–"
    if value_ms < 1000:
        return f"{value_ms:.0f} ms"
    if value_ms < 60_000:
        return f"{value_ms / 1000:.2f} s"
    return f"{value_ms / 60_000:.1f} min"


def format_percent(value: float | None) -> str:
    """Format a 0..1 fraction as a percentage with one decimal."""
    if value is None:
        return "–"
    return f"{value * 100:.1f}%"


def format_local_time(epoch_ms: int, offset_minutes: int, with_date: bool = True) -> str:
    """Format epoch milliseconds in the viewer's UTC offset."""
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=zone)
    return moment.strftime("%Y-%m-%d %H:%M" if with_date else "%H:%M")


def format_offset(offset_minutes: int) -> str:
    """Format a UTC offset in minutes as `UTC+05:30`."""
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"UTC{sign}{hours:02d}:{minutes:02d}"
