"""End to end: the xraptor 0.4 chat served by two ``xraptor run`` processes over PostgreSQL.

A room spans both processes and each member gets each message exactly once, large ones
included; an outage of the server gives every stream a gap notice and the room works
again once it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import PostgresCluster

from xraptor import Client
from xraptor.testing import ServerProcess, free_port, until, xraptor_run
from xraptor.testing.chat import ChatMember as Member
from xraptor.testing.chat import send, settle

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
    room = "lobby"
    async with (
        Client(first.url) as a,
        Client(first.url) as a2,
        Client(second.url) as b,
        Member(a, room) as ma1,
        Member(a2, room) as ma2,
        Member(b, room) as mb,
    ):
        members = [ma1, ma2, mb]
        await settle(members, a, room)
        expected = []
        for i in range(10):
            sender, origin = (a, "alice") if i % 2 == 0 else (b, "bob")
            # every third one is past NOTIFY's 8000 bytes (chunked), one holds a NUL
            text = f"hello {i} " + ("\x00" if i == 5 else "") + ("🦖" * 5000 if i % 3 == 0 else "")
            expected.append(text)
            await send(sender, room, origin, text)
        assert await until(
            lambda: all(len(m.texts("alice")) + len(m.texts("bob")) >= 10 for m in members),
            10,
        )
        await asyncio.sleep(0.3)  # nothing more arrives
        for member in members:
            got = [t for t in member.texts() if not t.startswith("probe-")]
            assert sorted(got) == sorted(expected)  # each message exactly once
            assert member.texts("alice") == expected[0::2]  # in order, per sender
            assert member.texts("bob") == expected[1::2]
    for server in (first, second):
        assert server.health()["antenna"]["name"] == "postgres"


async def test_an_outage_gives_gap_notices_and_the_room_recovers(
    two_servers: tuple[ServerProcess, ServerProcess], private_pg: PostgresCluster
) -> None:
    first, second = two_servers
    room = "sturdy"
    async with (
        Client(first.url) as a,
        Client(second.url) as b,
        Member(a, room) as ma,
        Member(b, room) as mb,
    ):
        await settle([ma, mb], a, room)
        private_pg.stop()
        try:
            for server in (first, second):
                assert await until(lambda s=server: s.health()["antenna"]["state"] == "down", 10)
        finally:
            private_pg.start()
        assert await until(lambda: ma.gaps >= 1 and mb.gaps >= 1, 15)
        for server in (first, second):
            assert await until(lambda s=server: s.health()["antenna"]["state"] == "up", 10)
        await send(b, room, "erin", "after the outage")
        assert await until(
            lambda: "after the outage" in ma.texts() and "after the outage" in mb.texts(),
            10,
        )
