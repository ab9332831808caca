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
from xraptor.testing import eventually, health, seconds_until_health
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


async def _status(port: int) -> int:
    return (await asyncio.to_thread(health, port, timeout=2))[0]


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
        async with antenna.subscribe("frozen-health") as sub:
            assert await seconds_until_health(server.port, 200, 5) < 5
            redis_server.pause()
            try:
                to_503 = await seconds_until_health(server.port, 503, HEALTH_TIMEOUT + 4)
                assert to_503 < HEALTH_TIMEOUT + 2, to_503
                # the probe noticed, not the driver: the connection is still open
                assert antenna.connection_state == "up" and antenna.reconnects == 0
                body = (await asyncio.to_thread(health, server.port, timeout=2))[1]
                assert body["status"] == "degraded"
                assert body["antenna"]["probe_failure"] == f"no answer within {HEALTH_TIMEOUT:g} s"
                await asyncio.sleep(1.0)
                assert await _status(server.port) == 503  # stays down while frozen
            finally:
                redis_server.resume()
            to_200 = await seconds_until_health(server.port, 200, 10)
            assert to_200 < 3, to_200
            print(f"\nredis SIGSTOP -> 503 in {to_503:.2f} s; SIGCONT -> 200 in {to_200:.2f} s")
            # no reconnection happened, so no gap: nothing was lost
            assert antenna.reconnects == 0 and sub.gaps == 0
            await antenna.post("frozen-health", "thawed")
            assert await asyncio.wait_for(sub.__anext__(), 2) == "thawed"
    finally:
        await server.close()
