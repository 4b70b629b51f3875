"""meterway's Datasette plugins: Analytics, the Logs table, the request page and exports.

Datasette loads this package through the `datasette` entry point in pyproject.toml. Each
submodule contains one page or hook, and this module registers them with Datasette's plugin
manager, because the entry point registers only the package itself.
"""

from __future__ import annotations

import importlib

from datasette.plugins import pm

SUBMODULES = (
    "analytics_page", "request_page", "cells", "metadata", "mitm_export", "navigation",
    "password", "range_cache", "narrow_reads", "warmup",
)

for _name in SUBMODULES:
    _module = importlib.import_module(f"{__name__}.{_name}")
    if not pm.is_registered(_module):
        pm.register(_module, name=f"{__name__}.{_name}")
