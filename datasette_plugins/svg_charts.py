"""Draw the Analytics charts as inline SVG on the server.

Server-side SVG needs no JavaScript library and no network, works with scripts off, and can
be checked in tests. Every label passes through `escape`, because model, route and client
names come from requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from .formatting import format_compact

# Tableau 10: distinct hues that stay apart for the common kinds of colour blindness.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)
OTHER_COLOUR = "#c9c9c9"
# Status classes keep their usual meaning: green success, orange client error, red failure.
STATUS_COLOURS = {"2xx": "#59a14f", "3xx": "#4e79a7", "4xx": "#f28e2b", "5xx": "#e15759",
                  "1xx": "#76b7b2", "none": "#9c755f"}

Formatter = Callable[[float], str]


@dataclass
class Series:
    """One stack layer of a bar chart: a name and one value per time bucket."""

    name: str
    values: list[float]
    colour: str


def colour_for(index: int, name: str, status: bool = False) -> str:
    """Pick the colour of the index-th group: by class for statuses, grey for `(other)`."""
    if name == "(other)":
        return OTHER_COLOUR
    if status and name in STATUS_COLOURS:
        return STATUS_COLOURS[name]
    return PALETTE[index % len(PALETTE)]


def nice_max(value: float) -> float:
    """Round a maximum up to 1, 2, 2.5 or 5 times a power of ten, so gridlines read well."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _svg(width: int, height: int, body: list[str], label: str) -> Markup:
    parts = [
        f'<svg class="mw-chart" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        *body,
        "</svg>",
    ]
    return Markup("".join(parts))


def _y_grid(left: int, right: int, top: int, bottom: int, top_value: float,
            fmt: Formatter) -> list[str]:
    lines = []
    for step in range(5):
        value = top_value * step / 4
        y = bottom - (bottom - top) * step / 4
        lines.append(
            f'<line class="grid" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(value))}</text>"
        )
    return lines


def _x_labels(labels: Sequence[str], left: int, slot: float, y: int) -> list[str]:
    # Show at most about ten labels, so they never overlap.
    every = max(1, math.ceil(len(labels) / 10))
    texts = []
    for index, label in enumerate(labels):
        if index % every:
            continue
        x = left + slot * (index + 0.5)
        texts.append(
            f'<text class="axis" x="{x:.1f}" y="{y}" text-anchor="middle">{escape(label)}</text>'
        )
    return texts


def stacked_bars(labels: Sequence[str], series: Sequence[Series], fmt: Formatter = format_compact,
                 label: str = "Traffic over time") -> Markup:
    """Draw stacked vertical bars, one per time bucket, one layer per series."""
    width, height, left, right, top, bottom = 900, 240, 56, 890, 10, 210
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top_value = nice_max(max(totals, default=0))
    slot = (right - left) / max(1, len(labels))
    bar = max(1.0, slot * 0.8)
    body = _y_grid(left, right, top, bottom, top_value, fmt)
    scale = (bottom - top) / top_value
    for index, bucket in enumerate(labels):
        y = float(bottom)
        x = left + slot * index + (slot - bar) / 2
        for layer in series:
            value = layer.values[index]
            if value <= 0:
                continue
            h = value * scale
            y -= h
            body.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{layer.colour}"><title>{escape(bucket)} · {escape(layer.name)}: '
                f"{escape(fmt(value))}</title></rect>"
            )
    body.extend(_x_labels(labels, left, slot, height - 10))
    return _svg(width, height, body, label)


def horizontal_bars(rows: Sequence[tuple[str, float, str]], label: str,
                    status: bool = False) -> Markup:
    """Draw one horizontal bar per (name, value, shown value) row, longest first as given."""
    # Sized for a half-width panel, so labels stay readable when the SVG scales down.
    row_height, left, right = 26, 170, 470
    height = row_height * max(1, len(rows)) + 6
    top_value = max((value for _, value, _ in rows), default=0) or 1
    body = []
    for index, (name, value, shown) in enumerate(rows):
        y = 4 + index * row_height
        w = max(1.0, (right - left) * value / top_value) if value > 0 else 0
        short = name if len(name) <= 24 else name[:23] + "…"
        body.append(
            f'<text class="label" x="{left - 8}" y="{y + 16}" text-anchor="end">'
            f"<title>{escape(name)}</title>{escape(short)}</text>"
            f'<rect class="bar" x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_height - 8}" '
            f'fill="{colour_for(index, name, status)}"><title>{escape(name)}: {escape(shown)}</title></rect>'
            f'<text class="value" x="{left + w + 6:.1f}" y="{y + 16}">{escape(shown)}</text>'
        )
    return _svg(560, height, body, label)


def latency_ranges(rows: Sequence[tuple[str, float | None, float | None, float | None]],
                   fmt: Formatter, label: str = "Latency percentiles per model") -> Markup:
    """Draw p50, p95 and p99 per model as nested bars on one shared axis."""
    row_height, left, right, axis_height = 28, 170, 530, 22
    height = row_height * max(1, len(rows)) + axis_height + 6
    top_value = nice_max(max((p99 or p95 or p50 or 0 for _, p50, p95, p99 in rows), default=0))
    scale = (right - left) / top_value
    body = []
    bottom = row_height * len(rows) + 4
    for step in range(5):
        x = left + (right - left) * step / 4
        body.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="2" y2="{bottom}"/>'
            f'<text class="axis" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">'
            f"{escape(fmt(top_value * step / 4))}</text>"
        )
    for index, (name, p50, p95, p99) in enumerate(rows):
        y = 4 + index * row_height
        short = name if len(name) <= 24 else name[:23] + "…"
        body.append(
            f'<text class="label" x="{left - 8}" y="{y + 17}" text-anchor="end">'
            f"<title>{escape(name)}</title>{escape(short)}</text>"
        )
        for value, css, inset in ((p99, "p99", 0), (p95, "p95", 3), (p50, "p50", 6)):
            if value is None:
                continue
            body.append(
                f'<rect class="bar {css}" x="{left}" y="{y + 2 + inset}" '
                f'width="{max(1.0, value * scale):.1f}" height="{row_height - 6 - 2 * inset}">'
                f"<title>{escape(name)} {css}: {escape(fmt(value))}</title></rect>"
            )
    return _svg(560, height + 4, body, label)


def error_rate_line(labels: Sequence[str], rates: Sequence[float | None],
                    label: str = "Error rate over time") -> Markup:
    """Draw the error rate per time bucket as a line over a shaded area, 0..max %."""
    width, height, left, right, top, bottom = 900, 200, 56, 890, 10, 170
    top_value = nice_max(max((r for r in rates if r is not None), default=0) or 0.01)
    slot = (right - left) / max(1, len(labels))
    body = _y_grid(left, right, top, bottom, top_value, lambda v: f"{v * 100:.0f}%")
    points = []
    for index, rate in enumerate(rates):
        if rate is None:
            continue
        x = left + slot * (index + 0.5)
        y = bottom - (bottom - top) * rate / top_value
        points.append((x, y, labels[index], rate))
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        area = f"{points[0][0]:.1f},{bottom} {path} {points[-1][0]:.1f},{bottom}"
        body.append(f'<polygon class="area" points="{area}"/>')
        body.append(f'<polyline class="line" points="{path}"/>')
        for x, y, bucket, rate in points:
            body.append(
                f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
                f"<title>{escape(bucket)}: {rate * 100:.1f}%</title></circle>"
            )
    body.extend(_x_labels(labels, left, slot, height - 10))
    return _svg(width, height, body, label)
