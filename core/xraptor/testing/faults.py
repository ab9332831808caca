"""A fault scenario for antenna plugins: a backend that freezes under a running server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..server import XRaptor
from .http import health, seconds_until_health


async def freeze_and_thaw(
    server: XRaptor,
    pause: Callable[[], None],
    resume: Callable[[], None],
    *,
    health_timeout: float,
    channel: str = "frozen-health",
) -> tuple[float, float]:
    """Freeze the backend of a started ``server`` (``pause``, e.g. SIGSTOP) and check
    what an antenna with a round-trip check (:meth:`xraptor.Antenna.ping`) must do.

    While frozen, ``/health`` turns 503 (``degraded``, the probe's failure reported)
    within ``health_timeout`` + 2 s and stays so; the driver itself has not noticed
    (``connection_state`` stays ``up``). After ``resume`` (always called), it is 200
    again within 3 s, with no reconnection and no gap, and delivery works.

    :returns: the seconds from ``pause`` to 503 and from ``resume`` to 200
    """
    antenna = server.antenna
    reconnects = getattr(antenna, "reconnects", 0)
    async with antenna.subscribe(channel) as sub:
        assert await seconds_until_health(server.port, 200, 5) < 5
        pause()
        try:
            to_503 = await seconds_until_health(server.port, 503, health_timeout + 4)
            assert to_503 < health_timeout + 2, to_503
            # the probe noticed, not the driver: its connection still looks fine
            assert antenna.connection_state == "up"
            assert getattr(antenna, "reconnects", 0) == reconnects
            body = (await asyncio.to_thread(health, server.port, timeout=2))[1]
            assert body["status"] == "degraded"
            assert body["antenna"]["probe_failure"] == f"no answer within {health_timeout:g} s"
            await asyncio.sleep(1.0)
            assert (await asyncio.to_thread(health, server.port, timeout=2))[0] == 503
        finally:
            resume()
        to_200 = await seconds_until_health(server.port, 200, 10)
        assert to_200 < 3, to_200
        # no reconnection happened, so no gap: nothing was lost
        assert getattr(antenna, "reconnects", 0) == reconnects and sub.gaps == 0
        await antenna.post(channel, "thawed")
        assert await asyncio.wait_for(sub.__anext__(), 2) == "thawed"
    return to_503, to_200
