"""The hub under concurrent subscribe / unsubscribe with a backend that takes its time."""

from __future__ import annotations

import asyncio
import random
from typing import ClassVar

import pytest

from xraptor import Subscription
from xraptor.antennas import MemoryAntenna


class SlowAntenna(MemoryAntenna):
    """The memory bus, with backend (un)subscription that yields to the loop."""

    name: ClassVar[str] = "slow"

    def __init__(self) -> None:
        super().__init__()
        self.watch_calls: dict[str, int] = {}
        self.backend: set[str] = set()

    async def watch(self, channel: str) -> None:
        await asyncio.sleep(random.random() / 200)
        assert channel not in self.backend, f"watched {channel} twice"
        self.backend.add(channel)
        self.watch_calls[channel] = self.watch_calls.get(channel, 0) + 1
        await super().watch(channel)

    async def unwatch(self, channel: str) -> None:
        await asyncio.sleep(random.random() / 200)
        assert channel in self.backend, f"unwatched {channel} that was not watched"
        self.backend.discard(channel)
        await super().unwatch(channel)


@pytest.mark.parametrize("seed", range(6))
async def test_concurrent_subscribe_and_close_keep_backend_and_listeners_consistent(
    seed: int,
) -> None:
    random.seed(seed)
    antenna = SlowAntenna()
    await antenna.start()
    channels = [f"c{i}" for i in range(5)]
    live: list[Subscription] = []

    async def churn(worker: int) -> None:
        for _ in range(60):
            if live and random.random() < 0.5:
                sub = live.pop(random.randrange(len(live)))
                await sub.aclose()
            else:
                sub = antenna.subscribe(random.choice(channels))
                live.append(sub)
                await sub.open()
            await asyncio.sleep(0)

    await asyncio.gather(*(churn(w) for w in range(8)))
    wanted = {sub.channel for sub in live}
    assert antenna.backend == wanted
    assert set(antenna.watched_channels()) == wanted
    # every live subscription gets each message exactly once
    for channel in wanted:
        await antenna.post(channel, f"to {channel}")
    for sub in live:
        assert await asyncio.wait_for(sub.__anext__(), 1) == f"to {sub.channel}"
        assert sub._queue.empty()
    for sub in list(live):
        await sub.aclose()
    assert antenna.backend == set() and antenna.watched_channels() == []
    await antenna.close()
