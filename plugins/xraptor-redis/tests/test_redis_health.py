"""Honest health: a frozen Redis (SIGSTOP) turns ``/health`` to 503 within seconds, and back.

Against a private redis-server on a free port, never the shared one; every test
resumes (SIGCONT) the server in ``finally``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
from redis_support import RedisServer

from xraptor import XRaptor
from xraptor.testing import eventually
from xraptor.testing.faults import freeze_and_thaw
from xraptor_redis.antenna import RedisAntenna

HEALTH_TIMEOUT = 1.5


@pytest_asyncio.fixture
async def antenna(redis_server: RedisServer) -> AsyncIterator[RedisAntenna]:
    antenna = RedisAntenna(url=redis_server.url, health_timeout=HEALTH_TIMEOUT)
    await antenna.start()
    try:
        yield antenna
    finally:
        await antenna.close()


async def test_ping_travels_the_subscriber_connection(antenna: RedisAntenna) -> None:
    assert antenna.can_ping
    # nothing subscribed yet: Redis answers PING with a plain reply
    await asyncio.wait_for(antenna.ping(), 2)
    async with antenna.subscribe("pinged") as sub:
        # subscribed: the answer is a pub/sub "pong" message the reader hands over
        await asyncio.wait_for(antenna.ping(), 2)
        await antenna.post("pinged", "after the pong")
        assert await asyncio.wait_for(sub.__anext__(), 2) == "after the pong"
    assert len(antenna._pongs) == 0

    async def probed() -> bool:
        return isinstance(antenna.describe()["round_trip_ms"], float)

    assert await eventually(probed, 5)
    assert antenna.describe()["health_timeout"] == HEALTH_TIMEOUT


async def test_frozen_redis_turns_health_503_then_200(redis_server: RedisServer) -> None:
    server = XRaptor(
        "127.0.0.1",
        0,
        antenna="redis",
        antenna_options={"url": redis_server.url, "health_timeout": HEALTH_TIMEOUT},
    )
    await server.start()
    antenna = server.antenna
    assert isinstance(antenna, RedisAntenna)
    try:
        to_503, to_200 = await freeze_and_thaw(
            server, redis_server.pause, redis_server.resume, health_timeout=HEALTH_TIMEOUT
        )
        print(f"\nredis SIGSTOP -> 503 in {to_503:.2f} s; SIGCONT -> 200 in {to_200:.2f} s")
    finally:
        await server.close()
