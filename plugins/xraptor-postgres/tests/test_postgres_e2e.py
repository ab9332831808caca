"""End to end: the xraptor 0.4 chat served by two ``xraptor run`` processes over PostgreSQL.

A room spans both processes and each member gets each message exactly once, large ones
included; an outage of the server gives every stream a gap notice and the room works
again once it is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import PostgresCluster

from xraptor.testing import ServerProcess, free_port, until, xraptor_run
from xraptor.testing.chat import check_outage_and_recovery, check_room_spans_processes

HERE = Path(__file__).parent


@pytest.fixture
def two_servers(pg_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two ``xraptor run pg_chat_app:app`` processes on the PostgreSQL antenna."""

    def start() -> ServerProcess:
        port = free_port()
        command = xraptor_run("pg_chat_app:app", "--antenna", pg_url, "--port", str(port))
        return ServerProcess([*command, "--log-level", "WARNING"], port=port, cwd=HERE)

    with start() as first, start() as second:
        yield first, second


async def test_the_chat_spans_two_processes_exactly_once(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_servers
    # every third one is past NOTIFY's 8000 bytes (chunked), one holds a NUL
    texts = [
        f"hello {i} " + ("\x00" if i == 5 else "") + ("🦖" * 5000 if i % 3 == 0 else "")
        for i in range(10)
    ]
    await check_room_spans_processes(first, second, texts)
    for server in (first, second):
        assert server.health()["antenna"]["name"] == "postgres"


async def test_an_outage_gives_gap_notices_and_the_room_recovers(
    two_servers: tuple[ServerProcess, ServerProcess], private_pg: PostgresCluster
) -> None:
    first, second = two_servers

    async def outage() -> None:
        private_pg.stop()
        try:
            for server in (first, second):
                assert await until(lambda s=server: s.health()["antenna"]["state"] == "down", 10)
        finally:
            private_pg.start()

    await check_outage_and_recovery(first, second, outage, up_within=10)
