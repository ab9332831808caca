"""The antenna contract, unchanged, against a real Redis.

The module's private redis-server is what the fault tests kill and restart on the
same port (``backend_fault``); the resource counts come from Redis itself (``CLIENT
LIST``), each antenna naming its connections with a ``client_name`` of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis
from redis_support import RedisServer

from xraptor import Antenna
from xraptor.testing import AntennaConformance, BackendFault, ResourceCounter
from xraptor_redis.antenna import RedisAntenna

#: reconnect promptly once the restarted server is back
OPTIONS = {"reconnect_max_delay": 0.5}


def _named_url(url: str, client_name: str) -> str:
    parts = urlsplit(url)
    query = {**{k: v[0] for k, v in parse_qs(parts.query).items()}, "client_name": client_name}
    return urlunsplit(parts._replace(query=urlencode(query)))


def _client_name(antenna: Antenna) -> str:
    assert isinstance(antenna, RedisAntenna)
    return parse_qs(urlsplit(antenna.url).query)["client_name"][0]


class TestRedisConformance(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self, redis_url: str) -> Callable[[], RedisAntenna]:
        def make() -> RedisAntenna:
            url = _named_url(redis_url, f"xrc-{uuid.uuid4().hex[:12]}")
            return RedisAntenna(url=url, **OPTIONS)

        return make

    @pytest.fixture
    def backend_fault(self, redis_module_server: RedisServer | None) -> Iterator[BackendFault]:
        server = redis_module_server
        if server is None:
            pytest.skip(
                "fault injection needs redis-server on PATH "
                "(the server at XRAPTOR_REDIS_URL cannot be restarted)"
            )
        yield BackendFault(stop=server.kill, start=server.start)
        if server.process is None:  # a test that failed half-way: the next ones need it
            server.start()

    @pytest.fixture
    def antenna_resources(self, redis_url: str) -> ResourceCounter:
        async def count(antenna: Antenna) -> dict[str, int]:
            """The antenna's connections as Redis lists them, and their subscriptions."""
            name = _client_name(antenna)
            async with Redis.from_url(redis_url, decode_responses=True, protocol=2) as admin:
                mine = [c for c in await admin.client_list() if c.get("name") == name]
            return {
                "connections": len(mine),
                "subscriptions": sum(int(c.get("sub", 0)) + int(c.get("psub", 0)) for c in mine),
            }

        return count
