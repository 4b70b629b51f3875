"""Run the gateway under mitmweb (`meterway web`), with logged requests loaded for replay.

The gateway's addons run inside mitmproxy's `WebMaster`, so live traffic shows up in the web
UI, and a request replayed from there goes through routing, key injection and logging
afresh: the router gives a replayed flow a new record that points at the original.
Requests opened from the log are loaded as `mitmweb -r` loads a file, so they are not
logged a second time.

The web UI needs a token, and mitmweb logs its URL with the token when it starts. So this
module generates the token and sets `web_password` to its argon2 hash. mitmweb then logs
the URL without the token, and only `print_web_url` shows it, on the terminal or in a file
with owner-only permissions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import ctx, http, options
from mitmproxy.tools.web.master import WebMaster

from addons.gateway import make_addons
from addons.readiness import Readiness
from meterway.flows import FlowExportError, decode_flows, select_flows
from meterway.ui import is_loopback

logger = logging.getLogger(__name__)

DEFAULT_WEB_PORT = 8081
# How many ports after the default to try when it is taken.
WEB_PORT_TRIES = 50


class WebSetupError(Exception):
    """`meterway web` cannot start: a port is taken or a request cannot be opened."""


class OpenLoggedFlows:
    """Loads flows from the request log into the web UI's flow list once the proxy runs."""

    def __init__(self, flows: Sequence[http.HTTPFlow]) -> None:
        self.flows = list(flows)

    async def running(self) -> None:
        for flow in self.flows:
            # The same path as `-r FILE`: every hook runs with `flow.live` False, so the
            # gateway neither routes nor logs these flows again.
            await ctx.master.load_flow(flow)
        if self.flows:
            logger.info("opened %d logged request(s) for replay", len(self.flows))


class WebUrlNotice:
    """Shows the web UI's URL once it listens (mitmweb starts its web server before `running`)."""

    def __init__(self, url: str, token_file: Path | None) -> None:
        self.url = url
        self.token_file = token_file

    def running(self) -> None:
        print_web_url(self.url, self.token_file)


class GatewayWebMaster(WebMaster):
    """mitmweb's master with the gateway's addons and the loader of logged requests."""

    def __init__(self, opts: options.Options, flows: Sequence[http.HTTPFlow], notice: WebUrlNotice, *,
                 replay_only: bool = False) -> None:
        super().__init__(opts, with_termlog=True)
        gateway_addons = make_addons()
        if replay_only:
            # Beside a running gateway the readiness port is taken, and the error that logs
            # makes mitmweb exit. A UI without listeners has no readiness to report anyway.
            gateway_addons = [addon for addon in gateway_addons if not isinstance(addon, Readiness)]
        self.addons.add(*gateway_addons)
        self.addons.add(OpenLoggedFlows(flows), notice)


def port_is_free(host: str, port: int) -> bool:
    """Tell whether a TCP listener could bind host:port right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR, as servers set it, so a port that only has closed connections in
        # TIME_WAIT still counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def pick_web_port(requested: int | None, host: str, listener_ports: set[int]) -> int:
    """Choose the web UI's port: the requested one, else 8081 or the next free port after it."""
    if requested is not None:
        if requested in listener_ports:
            raise WebSetupError(f"--web-port {requested} is also a gateway listener port in the config; "
                                "choose another port for the web UI")
        if not port_is_free(host, requested):
            raise WebSetupError(f"--web-port {requested} is in use on {host}; choose a free port")
        return requested
    for port in range(DEFAULT_WEB_PORT, DEFAULT_WEB_PORT + WEB_PORT_TRIES):
        if port not in listener_ports and port_is_free(host, port):
            return port
    raise WebSetupError(f"ports {DEFAULT_WEB_PORT} to {DEFAULT_WEB_PORT + WEB_PORT_TRIES - 1} are all in use "
                        f"on {host}; pass --web-port N")


def check_listener_ports(modes: Sequence[str]) -> None:
    """Raise WebSetupError when a listener port of the config is already taken."""
    for mode in modes:
        address = mode.rsplit("@", 1)[1]
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not port_is_free(host, int(port)):
            raise WebSetupError(
                f"listener port {port} on {host} is in use, probably by `meterway run` with this config; "
                "stop that gateway first, or pass --replay-only to start the web UI without listeners "
                "(replays need none)"
            )


def load_logged_flows(db_path: Path | None, ids: Sequence[str]) -> list[http.HTTPFlow]:
    """Read the flows of the given request ids from the request log."""
    if not ids:
        return []
    if db_path is None:
        raise WebSetupError("the config has no request log to open requests from")
    try:
        return decode_flows(select_flows(db_path, ids))
    except FlowExportError as err:
        raise WebSetupError(str(err)) from None


def hash_token(token: str) -> str:
    """Hash the web UI token with argon2, the form mitmweb's `web_password` accepts silently."""
    import argon2  # a dependency of mitmproxy's web UI

    return argon2.PasswordHasher().hash(token)


def print_web_url(url: str, token_file: Path | None) -> None:
    """Show the web UI's URL with its token on the terminal, or write it to `token_file`.

    The URL is printed to stdout only when stdout is a terminal, so a redirected output or
    a service log never contains the token.
    """
    if token_file is not None:
        descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(url + "\n")
        print(f"mitmweb: the web UI's URL with its token is in {token_file}", flush=True)
    elif sys.stdout.isatty():
        print(f"mitmweb: open {url}", flush=True)
    else:
        base = url.split("?", 1)[0]
        print(f"mitmweb: web UI on {base}; stdout is not a terminal, so its token is not printed: "
              "pass --token-file FILE to get the URL with the token", flush=True)


async def serve_web(config_path: Path, *, open_ids: Sequence[str] = (), web_host: str = "127.0.0.1",
                    web_port: int | None = None, upstreams: Sequence[str] = (), listen_host: str | None = None,
                    trusted_ca: str | None = None, replay_only: bool = False,
                    token_file: Path | None = None) -> int:
    """Run the gateway under mitmweb until SIGINT or SIGTERM; return the exit status.

    Raises WebSetupError (before anything starts) for a taken port or a request id that
    cannot be opened.
    """
    from addons.config_load import load_config
    from meterway.master import first_modes

    gateway = load_config(config_path)
    if not is_loopback(web_host):
        logger.warning("the web UI listens on %s, beyond loopback: anyone with its token can replay "
                       "requests with the configured provider keys", web_host)
    flows = load_logged_flows(gateway.database_path(), open_ids)
    modes = first_modes(config_path, listen_host)
    if not replay_only:
        check_listener_ports(modes)
    listener_ports = {int(mode.rsplit(":", 1)[1]) for mode in modes}
    port = pick_web_port(web_port, web_host, listener_ports)
    token = secrets.token_hex(16)

    host_part = f"[{web_host}]" if ":" in web_host else web_host
    notice = WebUrlNotice(f"http://{host_part}:{port}/?token={token}", token_file)
    opts = options.Options()
    web_master = GatewayWebMaster(opts, flows, notice, replay_only=replay_only)
    settings = {
        "mode": modes,
        "connection_strategy": "lazy",
        "meterway_config": str(config_path),
        "meterway_upstream": list(upstreams),
        "meterway_listen_host": listen_host or "",
        "web_host": web_host,
        "web_port": port,
        "web_open_browser": False,
        "web_password": hash_token(token),
        # A replay-only UI opens no listeners, so it runs beside `meterway run` on the same config.
        "server": not replay_only,
    }
    if trusted_ca:
        settings["ssl_verify_upstream_trusted_ca"] = trusted_ca
    opts.update(**settings)

    logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, web_master.shutdown)
    await web_master.run()
    return 0
