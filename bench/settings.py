"""Settings of one benchmark run: the command line and the three presets (full, quick, smoke)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from bench.targets import TARGETS

ALL_TARGETS = tuple(TARGETS)
PARTS = ("load", "store", "memory", "profile")


@dataclass
class Settings:
    targets: tuple[str, ...] = ALL_TARGETS
    parts: tuple[str, ...] = PARTS
    duration: float = 8.0  # seconds per plain-request case
    concurrencies: tuple[int, ...] = (1, 10, 50)
    stream_counts: tuple[int, ...] = (20, 50)
    stream_modes: tuple[str, ...] = ("fast", "paced")
    chunks: int = 120
    pace_ms: float = 10.0
    bulk_mb: int = 100
    store_seconds: float = 5.0
    profile_seconds: float = 8.0
    load_client: str = "auto"
    warmup_requests: int = 40
    docs: str | None = "docs/benchmarks.md"
    json_out: str | None = None
    preset: str = "full"
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> Settings:
    """Turn the command line into Settings, starting from the preset it names."""
    targets = "\n".join(f"  {name}: {description}" for name, description in TARGETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark meterway against direct calls, plain mitmdump, mitmdump that only calls the "
                    "ext_proc router (the router floor) and LiteLLM proxy, all on 127.0.0.1.",
        epilog=f"targets:\n{targets}", formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="Shorter cases, 20 streams only, a 20 MB memory test.")
    preset.add_argument("--smoke", action="store_true",
                        help="A few seconds per target, direct and meterway only, no docs update (for tests).")
    parser.add_argument("--targets", help=f"Comma-separated targets to measure, from: {', '.join(ALL_TARGETS)}.")
    parser.add_argument("--parts", help=f"Comma-separated parts to run, from: {', '.join(PARTS)}.")
    parser.add_argument("--duration", type=float, help="Seconds per plain-request case.")
    parser.add_argument("--load-client", choices=("auto", "wrk", "python"), default="auto",
                        help="Plain-request load tool: wrk when installed (auto), or the asyncio client.")
    parser.add_argument("--docs", help="Markdown file whose results section the run rewrites "
                                       "(default docs/benchmarks.md; smoke runs write none).")
    parser.add_argument("--no-docs", action="store_true", help="Print the results without writing any docs file.")
    parser.add_argument("--json", dest="json_out", help="Also write the raw results to this JSON file.")
    args = parser.parse_args(argv)

    settings = Settings()
    if args.quick:
        settings = Settings(duration=3.0, stream_counts=(20,), bulk_mb=20, store_seconds=2.0,
                            profile_seconds=4.0, preset="quick")
    elif args.smoke:
        settings = Settings(targets=("direct", "meterway"), parts=("load", "store"), duration=1.0,
                            concurrencies=(1, 10), stream_counts=(5,), stream_modes=("fast",), chunks=20,
                            store_seconds=0.5, warmup_requests=10, docs=None, preset="smoke")
    if args.targets:
        settings.targets = _pick(args.targets, ALL_TARGETS, "target")
    if args.parts:
        settings.parts = _pick(args.parts, PARTS, "part")
    if args.duration:
        settings.duration = args.duration
    settings.load_client = args.load_client
    if args.docs:
        settings.docs = args.docs
    if args.no_docs:
        settings.docs = None
    settings.json_out = args.json_out
    return settings


def _pick(text: str, allowed: tuple[str, ...], kind: str) -> tuple[str, ...]:
    chosen = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in chosen if name not in allowed]
    if unknown:
        raise SystemExit(f"unknown {kind} {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return chosen
