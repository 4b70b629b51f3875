"""The `meterway router` command: check a router config or serve it until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from meterway.router.config import RouterConfig, RouterConfigError, load_router_config, split_listen
from meterway.router.engine import RouterEngine
from meterway.router.server import RouterServer

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `meterway router`."""
    parser = argparse.ArgumentParser(
        prog="meterway router",
        description="Run the built-in semantic router, an Envoy ext_proc gRPC server that sets the routing header.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="The router config YAML file.")
    parser.add_argument("--listen", metavar="HOST:PORT", help="The address to listen on; overrides `listen` in the config (port 0 picks a free port).")
    parser.add_argument("--check", action="store_true", help="Validate the config, print the routes and exit without serving.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="The log level; debug logs one line per routing decision, without prompt text.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `meterway router` with `argv` (default: sys.argv[1:]); return the exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The level applies to the router's loggers only: grpc's own debug output is not wanted.
    logging.getLogger("meterway.router").setLevel(args.log_level.upper())

    try:
        config = load_router_config(args.config)
        if args.listen:
            split_listen(args.listen)
            config.listen = args.listen
    except RouterConfigError as error:
        print("Error: invalid router config", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"Error: --listen: {error}", file=sys.stderr)
        return 2

    if args.check:
        print(describe(config))
        return 0

    try:
        asyncio.run(serve(config))
    except OSError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


def describe(config: RouterConfig) -> str:
    """Summarise a config in a few lines: address, header, routes, default and embeddings."""
    rewrite = "rewritten to the route's model" if config.rewrite_model else "kept in the body"
    lines = [f"listen {config.listen}, header {config.header}, auto models {', '.join(config.auto_models)} ({rewrite})"]
    for route in config.routes:
        lines.append(
            f"route {route.name} -> {route.model} (priority {route.priority}, {len(route.keywords)} keywords, "
            f"{len(route.regex)} regexes, {len(route.examples)} examples)"
        )
    lines.append(f"default -> {config.default or '(none: no header is set)'}")
    if config.embeddings is not None:
        # The URL may carry a `$VAR` value; the API key is never printed.
        lines.append(f"embeddings {config.embeddings.model} at {config.embeddings.url}, threshold {config.embeddings.threshold:g}, timeout {config.embeddings.timeout:g} s")
    else:
        lines.append("embeddings off")
    return "\n".join(lines)


async def serve(config: RouterConfig) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly."""
    engine = RouterEngine(config)
    server = RouterServer(engine, config.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    try:
        port = await server.start()
    except OSError:
        await engine.close()
        raise
    host, _ = split_listen(config.listen)
    logger.info("router listening on %s:%d, setting header %s", host, port, config.header)
    for line in describe(config).splitlines()[1:]:
        logger.info("%s", line)

    await stop.wait()
    logger.info("router stopping")
    await server.stop()
    logger.info("router stopped")
