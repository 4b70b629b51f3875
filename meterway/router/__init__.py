"""meterway's built-in semantic router: an Envoy ext_proc server that picks a model per request.

It sets a routing header (`x-selected-model` by default) from keyword and regex rules, an
optional embedding classifier and a default, and rewrites auto model names such as `MoM`.
"""

from meterway.router.classify import Decision, decide, extract_prompt, match_rules
from meterway.router.config import RouterConfig, RouterConfigError, load_router_config
from meterway.router.engine import BodyResult, RouterEngine
from meterway.router.server import ExtProcServicer, RouterServer

__all__ = [
    "BodyResult",
    "Decision",
    "ExtProcServicer",
    "RouterConfig",
    "RouterConfigError",
    "RouterEngine",
    "RouterServer",
    "decide",
    "extract_prompt",
    "load_router_config",
    "match_rules",
]
