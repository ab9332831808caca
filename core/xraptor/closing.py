"""Helpers for a driver's ``close()``: stop its background tasks, fail its waiting callers.

An antenna driver typically runs tasks of its own (a reader, a publisher sending an
ordered outbox, a health check) and keeps futures that callers wait on (a publish
queued, a subscribe not yet confirmed). Closing stops the tasks first, so that none
completes a future afterwards, then fails every future still waiting::

    await stop_tasks(self._reader, self._publisher)
    fail_waiting(self._waiting.values(), lambda: AntennaError("the antenna is closed"))
    self._waiting.clear()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["fail_waiting", "stop_tasks"]


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task (``None`` is skipped), then wait until each has ended.

    Their cancellation is not raised again; any other exception a task ended with is.
    """
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def fail_waiting(
    futures: Iterable[asyncio.Future[Any]], error: Callable[[], BaseException]
) -> None:
    """Fail each future not done yet with a new ``error()``.

    The error is marked as retrieved, so that a future nobody awaits any more gives no
    "exception was never retrieved" warning.
    """
    for future in futures:
        if not future.done():
            future.set_exception(error())
            future.exception()
