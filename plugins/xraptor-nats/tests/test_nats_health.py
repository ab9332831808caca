"""Honest health: a frozen nats-server (SIGSTOP) turns ``/health`` to 503 within seconds, and back.

Against a private nats-server on a free port, never the shared one; every test
resumes (SIGCONT) the server in ``finally``.
"""

from __future__ import annotations

import asyncio

from nats_support import NatsServer

from xraptor import XRaptor
from xraptor.testing import eventually
from xraptor.testing.faults import freeze_and_thaw
from xraptor_nats.antenna import NatsAntenna

HEALTH_TIMEOUT = 1.5


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
        to_503, to_200 = await freeze_and_thaw(
            server, private_nats.pause, private_nats.resume, health_timeout=HEALTH_TIMEOUT
        )
        print(f"\nnats SIGSTOP -> 503 in {to_503:.2f} s; SIGCONT -> 200 in {to_200:.2f} s")
        assert len(antenna._sync_waiters) <= 1  # timed-out probes left nothing behind
    finally:
        await server.close()
