"""Run the benchmarks: `python -m bench [--quick | --smoke] [--targets ...] [--parts ...]`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from bench.report import render, write_docs
from bench.run import run_all, write_json
from bench.settings import parse_args

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print the tables and update the docs page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    results = run_all(settings)
    section = render(results)
    print(section)
    if settings.json_out:
        write_json(results, settings.json_out)
    if settings.docs:
        docs = Path(settings.docs)
        write_docs(docs if docs.is_absolute() else REPO / docs, section)
        print(f"results written to {settings.docs}")
    failed = [name for name, entry in results["targets"].items()
              if entry["status"] != "ok" and not entry["status"].startswith("missing")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
