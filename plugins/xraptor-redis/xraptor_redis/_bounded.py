"""A hard time bound for a redis-py call.

``asyncio.timeout`` around a redis-py call is not a hard bound: a cancelled read
inside redis-py can go on until redis-py's own socket timeout (seen with a
frozen server). Running the call as a task and waiting for it with a deadline
is: the caller gets control back on time, and the task is cancelled and left to
clean up on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def bounded(call: Awaitable[T], timeout: float) -> T:
    """Await ``call`` for at most ``timeout`` seconds, else raise :class:`TimeoutError`."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except BaseException:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise TimeoutError(f"no answer within {timeout} s")
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
