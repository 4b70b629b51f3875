"""A lean mitmproxy master for `meterway run`: the gateway's addons and only the built-in
ones a reverse proxy needs.

mitmdump loads about thirty built-in addons and calls each of them for every hook of every
flow. The gateway needs the proxy server, layer detection, TLS towards providers, startup
error checks and the terminal log; the rest (interception, replay tools, header and body
rewriting, the dumper) only costs time per request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, termlog, tlsconfig
from mitmproxy.proxy import mode_servers

from addons.gateway import make_addons
from addons.pricing import preload_genai_prices
from addons.store_process import LOG_TAG_VARIABLE
from meterway.dispatch import HookDispatcher

logger = logging.getLogger(__name__)


class GatewayMaster(master.Master):
    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts)
        # Replaced before any addon is added, so every hook goes through the cached dispatch.
        self.addons = HookDispatcher(self)
        self._termlog_addon = termlog.TermLog()
        self.addons.add(self._termlog_addon)
        self.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck(),
        )
        self.addons.add(*make_addons())
        # Last, so that its `running` comes after every other addon's start-up work.
        self.addons.add(FreezeStartupObjects())


class FreezeStartupObjects:
    """Move the objects that exist once the gateway runs out of the garbage collector's reach.

    A started gateway has about 120,000 objects (mitmproxy, pydantic models, gRPC, price
    data), most of which live until exit. CPython's full collection walks all of them:
    on the benchmark's 2-core machine each one stopped the event loop for 35-65 ms and
    set the p99 latency at one connection. After `gc.freeze()` a full collection walks only
    what was created later, 5-7 ms in the same run. Frozen objects that are dropped later are
    still freed by reference counting.
    NOTE: a reference cycle among frozen objects is never collected, so a part of the start-up
    config that a reload replaces stays in memory if it sits in such a cycle.
    """

    def running(self) -> None:
        # Built now rather than by the first priced flow, so the freeze covers it too.
        preload_genai_prices()
        gc.collect()
        gc.freeze()
        logger.debug("froze %d start-up objects out of the garbage collector", gc.get_freeze_count())


def share_listen_ports() -> None:
    """Make this process's TCP listeners bind with SO_REUSEPORT.

    `meterway run --workers N` starts N gateway processes on the same ports, and the kernel
    spreads new connections over them. mitmproxy binds without SO_REUSEPORT, which stops a
    second process from binding. This wraps mitmproxy's listen step for plain TCP modes (the
    gateway's reverse listeners) and leaves every other mode as it is.
    """
    original = mode_servers.AsyncioServerInstance.listen
    if getattr(original, "meterway_shared", False):
        return

    async def listen(self: mode_servers.AsyncioServerInstance, host: str, port: int) -> list:
        if self.mode.transport_protocol != "tcp" or port == 0:
            return await original(self, host, port)
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]

    listen.meterway_shared = True  # type: ignore[attr-defined]
    mode_servers.AsyncioServerInstance.listen = listen  # type: ignore[method-assign]


class _WorkerTag(logging.Filter):
    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "meterway_tagged", False):
            record.msg = f"{self.tag} {record.msg}"
            record.meterway_tagged = True
        return True


def tag_log_lines(tag: str) -> None:
    """Start every log line of this process with `tag`, so that lines in the workers' shared output name their worker.

    The filter sits on the root logger's handlers (mitmproxy's terminal log among them),
    because a filter on a logger applies only to records logged on that logger itself.
    """
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(tag))
    # The request log's writer process is spawned later and reads its tag from here.
    os.environ[LOG_TAG_VARIABLE] = tag


def first_modes(config_path: Path, listen_host: str | None) -> list[str]:
    """Compute the listener modes from the config before the master starts.

    Starting with the right modes means mitmproxy never opens its default *:8080.
    """
    from addons.config import PLACEHOLDER_TARGET
    from addons.config_load import load_config

    gateway = load_config(config_path)
    host = listen_host or gateway.meterway.listen_address
    host_part = f"[{host}]" if ":" in host else host
    ports = list(gateway.listener_ports())
    if gateway.llm_port() is not None:
        ports.append(gateway.llm_port())
    return [f"reverse:{PLACEHOLDER_TARGET}@{host_part}:{port}" for port in sorted(set(ports))]


async def serve(config_path: Path, *, upstreams: Sequence[str] = (), listen_host: str | None = None,
                trusted_ca: str | None = None, extra_options: dict | None = None) -> int:
    """Run the gateway until SIGINT or SIGTERM; return the exit status.

    `extra_options` may set `meterway_worker` (K/N), which makes the listeners share their
    ports with the other workers.
    """
    worker = (extra_options or {}).get("meterway_worker")
    if worker:
        share_listen_ports()
    opts = options.Options()
    gateway_master = GatewayMaster(opts)
    if worker:
        tag_log_lines(f"[worker {worker.split('/')[0]}]")
    settings = {
        "mode": first_modes(config_path, listen_host),
        "connection_strategy": "lazy",
        "meterway_config": str(config_path),
        "meterway_upstream": list(upstreams),
        "meterway_listen_host": listen_host or "",
    }
    if trusted_ca:
        settings["ssl_verify_upstream_trusted_ca"] = trusted_ca
    settings.update(extra_options or {})
    opts.update(**settings)

    # The terminal log shows info and above, but only what reaches it: without this the root
    # logger's default (warning) would hide the gateway's starts, stops and reloads. INFO and
    # not DEBUG, because at DEBUG every `logger.debug` call on the request path builds a record
    # (caller lookup included) that the terminal log then drops.
    logging.getLogger().setLevel(logging.INFO)
    for noisy in ("asyncio", "hpack", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # One line per client connection drowns the gateway's own messages.
    logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    # Until the drain addon takes these over in `running`, a signal stops at once.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, gateway_master.shutdown)
    await gateway_master.run()
    return 0
