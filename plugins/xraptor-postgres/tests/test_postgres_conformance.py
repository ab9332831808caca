"""The antenna contract, run unchanged against a private PostgreSQL cluster.

``backend_fault`` shuts the cluster down (immediate: every connection drops) and starts
it again on the same port; the resource counts come from the server itself
(``pg_stat_activity`` by the antenna's own ``application_name``, and the advisory locks
its sessions hold in ``pg_locks``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import asyncpg
import pytest
from pg_support import PostgresCluster

from xraptor import Antenna
from xraptor.testing import AntennaConformance, BackendFault, ResourceCounter
from xraptor_postgres.antenna import PostgresAntenna

COUNT = """
SELECT count(DISTINCT a.pid),
       count(l.pid) FILTER (WHERE l.locktype = 'advisory')
FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid
WHERE a.application_name = $1
"""


class TestPostgresConformance(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self, pg_url: str) -> Callable[[], PostgresAntenna]:
        def make() -> PostgresAntenna:
            return PostgresAntenna(url=pg_url, application_name=f"xrc-{uuid.uuid4().hex[:12]}")

        return make

    @pytest.fixture
    def backend_fault(self, private_pg: PostgresCluster) -> Iterator[BackendFault]:
        yield BackendFault(stop=private_pg.stop, start=private_pg.start)
        if not private_pg.running:  # a test that failed half-way: the next ones need it
            private_pg.start()

    @pytest.fixture
    def antenna_resources(self, pg_url: str) -> ResourceCounter:
        async def count(antenna: Antenna) -> dict[str, int]:
            """The antenna's sessions at the server, and the advisory locks they hold."""
            assert isinstance(antenna, PostgresAntenna)
            connection = await asyncpg.connect(pg_url)
            try:
                row = await connection.fetchrow(COUNT, antenna.settings.application_name)
            finally:
                await connection.close()
            assert row is not None
            return {"connections": int(row[0]), "subscriptions": int(row[1])}

        return count
