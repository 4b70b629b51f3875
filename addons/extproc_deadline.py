"""A per-stream timer that bounds each wait on an ext_proc call with one reusable timer handle."""

from __future__ import annotations

import asyncio


class StreamDeadline:
    """The message timeout of one ext_proc stream, shared by its successive waits.

    `asyncio.timeout()` schedules and cancels an event-loop timer for every wait. A stream
    waits several times in a row (write, reply, reply, end of stream), each wait much
    shorter than the limit, so this keeps one timer handle and only moves the deadline.
    When the handle fires before the current deadline it schedules itself again for
    that deadline. When a deadline passes, the task that is waiting is cancelled, as
    `asyncio.timeout()` does, and `expired()` turns that cancellation into a timeout.

    Use it as `start(limit)`, one await, then `stop()` in a `finally`: outside those
    brackets no deadline is set, so the timer never cancels a task that is doing
    something else.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = 0.0
        self._deadline: float | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._fired = False
        self.limit = 0.0

    def start(self, limit: float) -> None:
        """Bound the current task's next wait to `limit` seconds from now."""
        deadline = self._loop.time() + limit
        task = asyncio.current_task()
        self._deadline = deadline
        self._task = task
        self._cancelling = task.cancelling() if task is not None else 0
        self._fired = False
        self.limit = limit
        handle = self._handle
        if handle is None or self._handle_when > deadline:
            if handle is not None:
                handle.cancel()
            self._schedule(deadline)

    def stop(self) -> None:
        """End the bound of the current wait. The timer stays scheduled for the next one."""
        self._deadline = None
        self._task = None

    def close(self) -> None:
        """Cancel the timer when the stream ends."""
        self.stop()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def expired(self, task: asyncio.Task[object] | None) -> bool:
        """Return True when the CancelledError that `task` is handling came from this deadline.

        Call it once in the `except asyncio.CancelledError` block of the bounded wait. It
        withdraws the cancellation request that the deadline made, so the task can go on.
        """
        if not self._fired or task is None:
            return False
        self._fired = False
        return task.uncancel() <= self._cancelling

    def _schedule(self, when: float) -> None:
        self._handle = self._loop.call_at(when, self._on_timer)
        self._handle_when = when

    def _on_timer(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None or self._task is None:
            return
        if deadline > self._handle_when:
            # The deadline moved on since the timer was scheduled: wait for the new one.
            self._schedule(deadline)
            return
        self._fired = True
        self._task.cancel()
