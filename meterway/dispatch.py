"""Hook dispatch for the lean master: each event goes straight to the addons that handle it.

mitmproxy's `AddonManager.trigger_event` walks every addon (and its children) for every
event, looks the hook up by name, and enters a context manager per addon, and each flow
event is followed by an `update` event that no gateway addon handles. The profile of
`meterway run` counted about 140 such addon visits per request. This manager resolves the
handlers of an event once, keeps them until the addons change, and skips events that no
addon handles. Errors are handled as mitmproxy does. Each is logged with the addon's
traceback, and the rest of that addon's handlers for the event are skipped. `AddonHalt`
stops the event.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks

logger = logging.getLogger(__name__)

# For each top-level addon, the callables of it and its children that handle one event.
Handlers = list[list[Callable[..., Any]]]


class HookDispatcher(addonmanager.AddonManager):
    """An `AddonManager` that caches, per event name, which addons handle it."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._handlers: dict[str, Handlers] = {}

    def add(self, *addons: Any) -> None:
        self._handlers.clear()
        try:
            super().add(*addons)
        finally:
            self._handlers.clear()

    def remove(self, addon: Any) -> None:
        self._handlers.clear()
        super().remove(addon)

    def clear(self) -> None:
        self._handlers.clear()
        super().clear()

    def handlers(self, event: hooks.Hook) -> Handlers:
        """Return the callables that handle `event`, grouped by top-level addon."""
        found = self._handlers.get(event.name)
        if found is None:
            found = []
            for addon in self.chain:
                group = [func for _, func in self._iter_hooks(addon, event)]
                if group:
                    found.append(group)
            self._handlers[event.name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        groups = self.handlers(event)
        if not groups:
            return
        args = event.args()
        for group in groups:
            try:
                for func in group:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as error:
                etype, value, tb = sys.exc_info()
                tb = addonmanager.cut_traceback(tb, "trigger_event")
                logger.error(f"Addon error: {error}", exc_info=(etype, value, tb))
