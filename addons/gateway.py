"""meterway's mitmproxy entry script: the gateway's addons, in order.

    mitmdump -s addons/gateway.py --set meterway_config=configs/homelab.yaml

The addons share one flow record: config loads the YAML and opens the listeners, router
picks route, backend and model, auth swaps client credentials for the backend key, costlog
writes the row, and metrics, tracing and alerts observe each finished row.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import addons.router  # noqa: F401  (installed with `pip install -e .`)
except ImportError:
    # Run from a checkout without installing: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.alerts import Alerts
from addons.auth import Auth
from addons.config import Config
from addons.costlog import CostLog
from addons.drain import Drain
from addons.errors import install_json_error_pages
from addons.metrics import Metrics
from addons.readiness import Readiness
from addons.router import Router
from addons.tracing import Tracing


def make_addons() -> list[object]:
    """Create the gateway's addons in the order their hooks must run.

    Tracing follows the router because its span starts from the record the router creates,
    and its `request` hook marks the end of the router call. Drain comes last so that a
    finished flow's row is queued before the drain may end the process.
    """
    install_json_error_pages()
    config = Config()
    router = Router(config)
    costlog = CostLog(config)
    metrics = Metrics(config, stats=lambda: costlog.store.stats if costlog.store else None)
    tracing = Tracing(config)
    alerts = Alerts(config)
    costlog.observers += [metrics.observe, tracing.observe, alerts.observe]
    costlog.stream_observers.append(router.calls.chunk_observer)
    drain = Drain(config)
    readiness = Readiness(config, router, costlog, drain)
    return [config, router, tracing, Auth(config, router), costlog, metrics, alerts, drain, readiness]


addons = make_addons()
