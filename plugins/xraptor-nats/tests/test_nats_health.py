"""Honest health: a frozen nats-server (SIGSTOP) turns ``/health`` to 503 within seconds, and back.

Against a private nats-server on a free port, never the shared one; every test
resumes (SIGCONT) the server in ``finally``.
"""

from __future__ import annotations

import asyncio

from nats_support import NatsServer

from xraptor import XRaptor
from xraptor.testing import eventually, health, seconds_until_health
from xraptor_nats.antenna import NatsAntenna

HEALTH_TIMEOUT = 1.5


async def _status(port: int) -> int:
    return (await asyncio.to_thread(health, port, timeout=2))[0]


async def test_ping_is_a_server_round_trip(nats_url: str) -> None:
    async with NatsAntenna(servers=nats_url, health_timeout=HEALTH_TIMEOUT) as antenna:
        assert antenna.can_ping
        await asyncio.wait_for(antenna.ping(), 2)
        assert antenna._sync_waiters == {}

        async def probed() -> bool:
            return isinstance(antenna.describe()["round_trip_ms"], float)

        assert await eventually(probed, 5)
        assert antenna.describe()["probe_failure"] is None


async def test_frozen_nats_turns_health_503_then_200(private_nats: NatsServer) -> None:
    server = XRaptor(
        "127.0.0.1",
        0,
        antenna="nats",
        antenna_options={"servers": private_nats.url, "health_timeout": HEALTH_TIMEOUT},
    )
    await server.start()
    antenna = server.antenna
    assert isinstance(antenna, NatsAntenna)
    try:
        async with antenna.subscribe("frozen-health") as sub:
            assert await seconds_until_health(server.port, 200, 5) < 5
            private_nats.pause()
            try:
                to_503 = await seconds_until_health(server.port, 503, HEALTH_TIMEOUT + 4)
                assert to_503 < HEALTH_TIMEOUT + 2, to_503
                # the probe noticed, not nats-py: its connection still looks fine
                assert antenna.connection_state == "up" and antenna.reconnects == 0
                body = (await asyncio.to_thread(health, server.port, timeout=2))[1]
                assert body["status"] == "degraded"
                assert body["antenna"]["probe_failure"] == f"no answer within {HEALTH_TIMEOUT:g} s"
                await asyncio.sleep(1.0)
                assert await _status(server.port) == 503  # stays down while frozen
            finally:
                private_nats.resume()
            to_200 = await seconds_until_health(server.port, 200, 10)
            assert to_200 < 3, to_200
            print(f"\nnats SIGSTOP -> 503 in {to_503:.2f} s; SIGCONT -> 200 in {to_200:.2f} s")
            assert antenna.reconnects == 0 and sub.gaps == 0
            await antenna.post("frozen-health", "thawed")
            assert await asyncio.wait_for(sub.__anext__(), 2) == "thawed"
            assert len(antenna._sync_waiters) <= 1  # timed-out probes left nothing behind
    finally:
        await server.close()
