"""The `meterway` command: check a config, run the gateway, open the UI, run the router."""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("configs/default.yaml")


def _check(args: argparse.Namespace) -> int:
    from addons.config_load import ConfigError, load_config

    try:
        gateway = load_config(Path(args.config))
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(err.problems)} problem(s) in {args.config}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot read {args.config}: {err.strerror}", file=sys.stderr)
        return 2
    ports = ", ".join(str(p) for p in [*gateway.listener_ports(), gateway.llm_port()] if p is not None)
    print(f"{args.config}: valid; listeners on ports {ports}; request log {gateway.database_path()}")
    return 0


def _start_ui(config: str, host: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meterway", "ui", config, "--host", host, "--port", str(port)])


def _start_router(router_config: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meterway.router", "--config", router_config])


def _stop(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def _run(args: argparse.Namespace) -> int:
    from addons.config_load import ConfigError, load_config
    from meterway.master import serve

    config = Path(args.config)
    try:
        load_config(config)
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers {args.workers}: give 1 or more gateway processes", file=sys.stderr)
        return 2
    # The router starts first, so the gateway's first requests find it listening.
    router = _start_router(args.router) if args.router else None
    ui = _start_ui(str(config), args.ui_host, args.ui_port) if args.ui else None
    try:
        if args.workers > 1 and not args.worker:
            from meterway.workers import run_workers

            logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
            return run_workers(config, args.workers, _worker_args(args))
        extra = {"meterway_worker": args.worker or "", "meterway_stats_addr": args.worker_stats or "",
                 "meterway_readiness_addr": args.worker_ready or ""}
        return asyncio.run(serve(config, upstreams=args.upstream, listen_host=args.listen_host,
                                 trusted_ca=args.trusted_ca, extra_options=extra))
    finally:
        _stop(ui)
        _stop(router)


def _worker_args(args: argparse.Namespace) -> list[str]:
    """Return the `meterway run` options each worker process repeats."""
    forwarded = [item for upstream in args.upstream for item in ("--upstream", upstream)]
    if args.listen_host:
        forwarded += ["--listen-host", args.listen_host]
    if args.trusted_ca:
        forwarded += ["--trusted-ca", args.trusted_ca]
    return forwarded


def _ui(args: argparse.Namespace) -> int:
    from meterway.ui import serve

    target = Path(args.target)
    if target.suffix in (".yaml", ".yml"):
        from addons.config_load import load_config

        db_path = load_config(target).database_path()
    else:
        db_path = target
    return serve(db_path, host=args.host, port=args.port, password=args.password)


def _log_path(args: argparse.Namespace) -> Path:
    from meterway.flows import log_path_of

    return Path(args.db) if args.db else log_path_of(Path(args.config or DEFAULT_CONFIG))


def _flow(args: argparse.Namespace) -> int:
    from addons.config_load import ConfigError
    from meterway.flows import FlowExportError, default_output, select_flows, write_flows

    if not args.ids and not args.where:
        print("Error: name at least one request id, or select requests with --where", file=sys.stderr)
        return 2
    try:
        flows = select_flows(_log_path(args), args.ids, args.where)
    except ConfigError as err:
        print("Error: " + "; ".join(err.problems), file=sys.stderr)
        return 2
    except FlowExportError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    output = Path(args.output) if args.output else default_output(args.ids)
    write_flows(flows, output)
    print(f"wrote {len(flows)} flow(s) to {output}; open them with `mitmweb -r {output}` "
          "or `meterway web CONFIG --open ID`")
    return 0


def _web(args: argparse.Namespace) -> int:
    from addons.config_load import ConfigError
    from meterway.web import WebSetupError, serve_web

    try:
        return asyncio.run(serve_web(
            Path(args.config), open_ids=args.open, web_host=args.web_host, web_port=args.web_port,
            upstreams=args.upstream, listen_host=args.listen_host, trusted_ca=args.trusted_ca,
            replay_only=args.replay_only, token_file=Path(args.token_file) if args.token_file else None,
        ))
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except WebSetupError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1


def _router(argv: list[str]) -> int:
    from meterway.router.cli import main as router_main

    return router_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterway", description="An observable LLM gateway on mitmproxy.")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="Validate a gateway config file without starting anything.")
    check.add_argument("config", help="Path of the gateway config (agentgateway standalone YAML).")
    check.set_defaults(func=_check)

    run = commands.add_parser("run", help="Run the gateway in the foreground on a config file.")
    run.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="Path of the gateway config.")
    run.add_argument("--upstream", action="append", default=[], metavar="HOST:PORT=URL",
                     help="Send requests for an upstream host:port to another URL instead (repeatable).")
    run.add_argument("--listen-host", default=None,
                     help="Address the listeners bind to (default: the config's, else 127.0.0.1).")
    run.add_argument("--trusted-ca", default=None, help="PEM file of CA certificates to trust for upstream TLS.")
    run.add_argument("--ui", action="store_true", help="Also start the Datasette UI on the request log.")
    run.add_argument("--router", metavar="ROUTER_CONFIG", default=None,
                     help="Also start the built-in semantic router with this config (see configs/router.yaml).")
    run.add_argument("--ui-host", default="127.0.0.1", help="Address of the UI (default 127.0.0.1).")
    run.add_argument("--ui-port", type=int, default=15000, help="Port of the UI (default 15000).")
    run.add_argument("--workers", type=int, default=1,
                     help="Gateway processes sharing the listener ports (default 1); more use more cores.")
    # Set by the supervisor of `--workers` for each process it starts.
    run.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    run.add_argument("--worker-stats", default=None, help=argparse.SUPPRESS)
    run.add_argument("--worker-ready", default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    ui = commands.add_parser("ui", help="Serve the request log in Datasette with meterway's pages.")
    ui.add_argument("target", nargs="?", default=str(DEFAULT_CONFIG), help="A gateway config or a database file.")
    ui.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1).")
    ui.add_argument("--port", type=int, default=15000, help="Port to bind (default 15000).")
    ui.add_argument("--password", default=None, help="Require this password to view the UI.")
    ui.set_defaults(func=_ui)

    flow = commands.add_parser("flow", help="Export logged requests as a mitmproxy flow file (.mitm).")
    flow.add_argument("ids", nargs="*", metavar="ID", help="Request ids (the x-meterway-request-id header).")
    source = flow.add_mutually_exclusive_group()
    source.add_argument("--db", default=None, help="Path of the request log (SQLite).")
    source.add_argument("--config", default=None,
                        help=f"Gateway config whose request log to read (default {DEFAULT_CONFIG}).")
    flow.add_argument("--where", default=None, metavar="SQL",
                      help="Also export the rows this SQL condition on `requests` selects, "
                           "for example \"outcome != 'ok'\".")
    flow.add_argument("-o", "--output", default=None,
                      help="File to write (default ID.mitm for one id, else flows.mitm).")
    flow.set_defaults(func=_flow)

    web = commands.add_parser("web", help="Run the gateway under mitmweb to inspect and replay requests.")
    web.add_argument("config", help="Path of the gateway config.")
    web.add_argument("--open", nargs="+", default=[], metavar="ID",
                     help="Load these logged requests into the web UI, ready to edit and replay.")
    web.add_argument("--web-host", default="127.0.0.1", help="Address of the web UI (default 127.0.0.1).")
    web.add_argument("--web-port", type=int, default=None,
                     help="Port of the web UI (default 8081, or the next free port).")
    web.add_argument("--upstream", action="append", default=[], metavar="HOST:PORT=URL",
                     help="Send requests for an upstream host:port to another URL instead (repeatable).")
    web.add_argument("--listen-host", default=None,
                     help="Address the listeners bind to (default: the config's, else 127.0.0.1).")
    web.add_argument("--trusted-ca", default=None, help="PEM file of CA certificates to trust for upstream TLS.")
    web.add_argument("--replay-only", action="store_true",
                     help="Open no listeners, only the web UI, so it runs beside `meterway run`.")
    web.add_argument("--token-file", default=None,
                     help="Write the web UI's URL with its token to this file (mode 0600) instead of "
                          "printing it.")
    web.set_defaults(func=_web)

    commands.add_parser("router", help="Run the built-in semantic router (ext_proc server).", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `meterway` command line and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "router":
        return _router(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command not in ("run", "web"):
        # `run` and `web` log through mitmproxy's terminal log instead.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)
