"""What the antenna's parts fail their waiting callers with when it closes: the
subscribers' (un)subscribes still waiting for Redis, the publisher's queued publishes."""

from __future__ import annotations

import asyncio

from xraptor.antenna import AntennaError
from xraptor.closing import fail_waiting


def closed() -> AntennaError:
    """The error of a caller still waiting when the antenna closes."""
    return AntennaError("the redis antenna is closed")


def fail_subscribes(*waiting: dict[str, asyncio.Future[None]]) -> None:
    """Fail every future of ``waiting`` (channel -> confirmation) and empty them."""
    for futures in waiting:
        fail_waiting(futures.values(), closed)
        futures.clear()
