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
from typing import Any

import orjson
import pytest

pytest.importorskip("xraptor.demo", reason="the core server's chat demo is not there yet")

from redis_support import RedisServer, ServerProcess

from xraptor import Client, ClientError, Response

SERVER = Path(__file__).with_name("redis_chat_server.py")
ROOM = "/chat_messages"
SEND = "/send_message_to_chat_room"


@pytest.fixture
def two_servers(redis_server: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    scope = f"e2e-{time.monotonic_ns()}"
    first = ServerProcess(
        SERVER, redis_server.url, XRAPTOR_TEST_LIMIT="6", XRAPTOR_TEST_SCOPE=scope
    )
    try:
        second = ServerProcess(
            SERVER, redis_server.url, XRAPTOR_TEST_LIMIT="6", XRAPTOR_TEST_SCOPE=scope
        )
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


class Member:
    """A stream on the room that records every push it gets."""

    def __init__(self, client: Client, room: str) -> None:
        self.stream = client.subscribe(ROOM, {"chat_id": room})
        self.messages: list[dict[str, Any]] = []
        self.gaps = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Member:
        await self.stream.__aenter__()
        self._task = asyncio.ensure_future(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.stream.close()

    async def _collect(self) -> None:
        async for response in self.stream:
            if response.header.get("notice") == "gap":
                self.gaps += 1
                continue
            self.messages.append(orjson.loads(response.payload))

    def texts(self, origin: str | None = None) -> list[str]:
        return [m["message"] for m in self.messages if origin is None or m["origin"] == origin]


async def _until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _send(client: Client, room: str, origin: str, text: str, who: str = "") -> Response:
    return await client.post(
        SEND,
        {"chat_id": room, "client_id": origin, "message": text},
        {"client": who or origin},
    )


async def _settle(members: list[Member], sender: Client, room: str) -> None:
    """Post probes until every member receives them: the room is live everywhere."""
    for attempt in range(100):
        await _send(sender, room, "probe", f"probe-{attempt}", who=f"probe-{attempt}")
        if await _until(lambda: all(m.texts("probe") for m in members), 0.2):
            return
    raise AssertionError("the room never became live on every member")


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
        await _settle(members, a, room)
        expected = []
        for i in range(10):
            sender, origin = (a, "alice") if i % 2 == 0 else (b, "bob")
            text = f"hello {i}"
            expected.append(text)
            await _send(sender, room, origin, text, who=f"sender-{i}")
        assert await _until(
            lambda: all(len(m.texts("alice")) + len(m.texts("bob")) >= 10 for m in members)
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
            await _send(a if i % 2 else b, "quiet", "carol", f"m{i}", who="carol")
        with pytest.raises(ClientError) as refused:
            await _send(a, "quiet", "carol", "one too many", who="carol")
        assert refused.value.code == "rate_limited"
        with pytest.raises(ClientError):
            await _send(b, "quiet", "carol", "still too many", who="carol")
        await _send(b, "quiet", "dave", "someone else", who="dave")


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
        await _settle([ma, mb], a, room)
        redis_server.restart()
        assert await _until(lambda: ma.gaps >= 1 and mb.gaps >= 1, 15)
        for server in (first, second):
            assert await _until(lambda s=server: s.health()["antenna"]["state"] == "up", 5)
        await _send(b, room, "erin", "after the restart", who="erin")
        assert await _until(
            lambda: "after the restart" in ma.texts() and "after the restart" in mb.texts()
        )
