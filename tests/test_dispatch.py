"""The lean master's hook dispatch: same order and error handling as mitmproxy's, from a cache."""

from __future__ import annotations

import gc
import logging

import pytest
from mitmproxy import exceptions, master, options
from mitmproxy.http import HTTPFlow
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow

from meterway.dispatch import HookDispatcher


class Recorder:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def request(self, flow: HTTPFlow) -> None:
        self.calls.append(self.name)


class Failing:
    def request(self, flow: HTTPFlow) -> None:
        raise ValueError("the addon broke")


class Halting:
    def request(self, flow: HTTPFlow) -> None:
        raise exceptions.AddonHalt


class Later:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def request(self, flow: HTTPFlow) -> None:
        self.calls.append("later")


@pytest.fixture
async def dispatcher() -> HookDispatcher:
    return HookDispatcher(master.Master(options.Options()))


async def test_dispatch_logs_an_error_and_goes_on(dispatcher: HookDispatcher,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    dispatcher.add(Recorder("first", calls), Failing(), Later(calls))
    with caplog.at_level(logging.ERROR):
        await dispatcher.trigger_event(HttpRequestHook(tflow.tflow()))
    assert calls == ["first", "later"]
    assert "Addon error: the addon broke" in caplog.text


async def test_dispatch_stops_at_addon_halt(dispatcher: HookDispatcher) -> None:
    calls: list[str] = []
    dispatcher.add(Recorder("first", calls), Halting(), Later(calls))
    await dispatcher.trigger_event(HttpRequestHook(tflow.tflow()))
    assert calls == ["first"]


async def test_dispatch_sees_addons_added_later(dispatcher: HookDispatcher) -> None:
    calls: list[str] = []
    dispatcher.add(Recorder("first", calls))
    await dispatcher.trigger_event(HttpRequestHook(tflow.tflow()))
    dispatcher.add(Later(calls))
    await dispatcher.trigger_event(HttpRequestHook(tflow.tflow()))
    assert calls == ["first", "first", "later"]


def test_startup_objects_frozen_when_running() -> None:
    from meterway.master import FreezeStartupObjects

    before = gc.get_freeze_count()
    try:
        FreezeStartupObjects().running()
        assert gc.get_freeze_count() > before
        # A full collection now walks only what was made after the freeze.
        assert len(gc.get_objects(generation=2)) < gc.get_freeze_count() // 10
    finally:
        gc.unfreeze()
