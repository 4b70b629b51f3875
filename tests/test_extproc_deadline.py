"""The ext_proc message timeout: per message, over real gRPC to a scripted router on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from addons.extproc import ExtProcClient, ProcessingOptions
from tests.standins.extproc_server import ExtProcServer, continue_reply

BUFFERED = ProcessingOptions(request_body_mode="buffered", response_header_mode="skip", response_body_mode="none")
BODY = b'{"model": "MoM"}'


@pytest.fixture
async def router() -> AsyncIterator[ExtProcServer]:
    server = ExtProcServer("scripted")
    await server.start()
    yield server
    await server.stop()


def slow_reply(phase: str, seconds: float):
    async def reply(message, state):
        await asyncio.sleep(seconds)
        return continue_reply(phase)
    return reply


async def run_request(server: ExtProcServer, timeout: float):
    client = ExtProcClient(server.target, BUFFERED, message_timeout=timeout)
    await client.start()
    session = client.session()
    began = time.perf_counter()
    decision = await session.request("POST", "http", "gw", "/v1/chat/completions",
                                     [("content-length", str(len(BODY)))], BODY)
    elapsed = time.perf_counter() - began
    await session.close()
    await client.close()
    return decision, elapsed


async def test_timeout_applies_per_message(router):
    # Each reply comes within the limit although the two together take longer.
    router.scripts["request_headers"] = slow_reply("request_headers", 0.3)
    router.scripts["request_body"] = slow_reply("request_body", 0.3)
    decision, elapsed = await run_request(router, timeout=0.5)
    assert decision.outcome == "ok"
    assert decision.error is None
    assert elapsed > 0.5


async def test_second_message_times_out(router):
    router.scripts["request_headers"] = slow_reply("request_headers", 0.2)
    router.scripts["request_body"] = slow_reply("request_body", 3.0)
    decision, elapsed = await run_request(router, timeout=0.4)
    assert decision.outcome == "timeout_failed_closed"
    assert "no reply within 0.4 s" in decision.error
    assert decision.immediate.status == 504
    # The body's wait starts when its reply is awaited, not when the stream opened.
    assert 0.55 < elapsed < 1.5


async def test_timeout_leaves_no_tasks(router):
    router.scripts["request_headers"] = slow_reply("request_headers", 3.0)
    before = len(asyncio.all_tasks())
    decision, _ = await run_request(router, timeout=0.2)
    await asyncio.sleep(0.05)
    assert decision.outcome == "timeout_failed_closed"
    assert len(asyncio.all_tasks()) <= before


async def test_outer_timeout_wins_and_timer_stays_quiet(router):
    router.scripts["request_headers"] = slow_reply("request_headers", 3.0)
    client = ExtProcClient(router.target, BUFFERED, message_timeout=0.3)
    await client.start()
    session = client.session()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await session.request("POST", "http", "gw", "/v1/chat/completions", [], BODY)
    # The same task goes on past the stream's own deadline, which must not cancel it.
    await asyncio.sleep(0.4)
    await session.close()
    await client.close()
