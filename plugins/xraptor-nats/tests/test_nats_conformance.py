"""The antenna contract, run unchanged against a real nats-server.

The module's private nats-server is what the fault tests kill and restart on the
same port (``backend_fault``); the resource counts come from the server's
monitoring endpoint (``/connz``), each antenna naming its connection.
Without the ``nats-server`` binary the suite runs against ``XRAPTOR_NATS_URL``,
and the fault and resource tests skip.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from nats_support import NatsServer, free_port, nats_binary

from xraptor import Antenna
from xraptor.testing import AntennaConformance, BackendFault, ResourceCounter
from xraptor_nats.antenna import NatsAntenna


@dataclass
class Monitored:
    """A private nats-server with its monitoring port."""

    server: NatsServer
    monitor_port: int

    def connections(self) -> list[dict[str, object]]:
        url = f"http://127.0.0.1:{self.monitor_port}/connz?limit=100000"
        with urllib.request.urlopen(url, timeout=5) as answer:
            listing: list[dict[str, object]] = json.load(answer)["connections"]
        return listing


@pytest.fixture(scope="module")
def monitored_nats() -> Iterator[Monitored | None]:
    binary = nats_binary()
    if binary is None:
        yield None
        return
    monitor_port = free_port()
    server = NatsServer(f"nats://127.0.0.1:{free_port()}", binary, ("-m", str(monitor_port)))
    server.start()
    try:
        yield Monitored(server, monitor_port)
    finally:
        server.stop()


class TestNatsConformance(AntennaConformance):
    @pytest.fixture
    def antenna_factory(
        self, monitored_nats: Monitored | None, request: pytest.FixtureRequest
    ) -> Callable[[], NatsAntenna]:
        if monitored_nats is not None:
            url = monitored_nats.server.url
        else:  # XRAPTOR_NATS_URL, or a skip (a failure under CI=true)
            url = request.getfixturevalue("nats_url")

        def make() -> NatsAntenna:
            return NatsAntenna(servers=url, name=f"xrc-{uuid.uuid4().hex[:12]}")

        return make

    @pytest.fixture
    def backend_fault(self, monitored_nats: Monitored | None) -> Iterator[BackendFault]:
        if monitored_nats is None:
            pytest.skip("fault injection needs the nats-server binary (to kill and restart it)")
        server = monitored_nats.server
        yield BackendFault(stop=server.kill, start=server.start)
        if not server.running:  # a test that failed half-way: the next ones need it
            server.start()

    @pytest.fixture
    def antenna_resources(self, monitored_nats: Monitored | None) -> ResourceCounter | None:
        if monitored_nats is None:
            return None  # no monitoring endpoint to ask

        async def count(antenna: Antenna) -> dict[str, int]:
            """The antenna's connections as the server lists them, and their subscriptions."""
            name = antenna.options["name"]
            listing = await asyncio.to_thread(monitored_nats.connections)
            mine = [c for c in listing if c.get("name") == name]
            return {
                "connections": len(mine),
                "subscriptions": sum(int(str(c.get("subscriptions", 0))) for c in mine),
            }

        return count
