"""End to end: two xraptor server processes share a private redis-server.

A chat room spans both processes and each member gets each message exactly
once; the rate limit is shared by both; a kill -9 and restart of Redis gives
every stream a gap notice and the room works again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("xraptor.demo", reason="the core server's chat demo is not there yet")

from redis_support import RedisServer, script_process

from xraptor import Client, ClientError
from xraptor.testing import ServerProcess, until
from xraptor.testing.chat import ChatMember as Member
from xraptor.testing.chat import send, settle

SERVER = Path(__file__).with_name("redis_chat_server.py")


@pytest.fixture
def two_servers(redis_server: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    scope = f"e2e-{time.monotonic_ns()}"
    env = {"XRAPTOR_TEST_LIMIT": "6", "XRAPTOR_TEST_SCOPE": scope}
    with (
        script_process(SERVER, redis_server.url, **env) as first,
        script_process(SERVER, redis_server.url, **env) as second,
    ):
        yield first, second


async def test_room_spans_two_processes_exactly_once(
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
            text = f"hello {i}"
            expected.append(text)
            await send(sender, room, origin, text, who=f"sender-{i}")
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
        assert server.health()["antenna"]["name"] == "redis"


async def test_rate_limit_is_shared_by_both_processes(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_servers
    async with Client(first.url) as a, Client(second.url) as b:
        for i in range(6):
            await send(a if i % 2 else b, "quiet", "carol", f"m{i}", who="carol")
        with pytest.raises(ClientError) as refused:
            await send(a, "quiet", "carol", "one too many", who="carol")
        assert refused.value.code == "rate_limited"
        with pytest.raises(ClientError):
            await send(b, "quiet", "carol", "still too many", who="carol")
        await send(b, "quiet", "dave", "someone else", who="dave")


async def test_redis_restart_gives_gap_notice_and_room_recovers(
    two_servers: tuple[ServerProcess, ServerProcess], redis_server: RedisServer
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
        redis_server.restart()
        assert await until(lambda: ma.gaps >= 1 and mb.gaps >= 1, 15)
        for server in (first, second):
            assert await until(lambda s=server: s.health()["antenna"]["state"] == "up", 5)
        await send(b, room, "erin", "after the restart", who="erin")
        assert await until(
            lambda: "after the restart" in ma.texts() and "after the restart" in mb.texts(),
            10,
        )
