"""End to end: the xraptor 0.4 chat served by two ``xraptor run`` processes over PostgreSQL.

A room spans both processes and each member gets each message exactly once, large ones
included; an outage of the server gives every stream a gap notice and the room works
again once it is back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pg_support import PostgresCluster, free_port

from xraptor import Client, Response
from xraptor.testing import health

HERE = Path(__file__).parent
ROOM = "/chat_messages"
SEND = "/send_message_to_chat_room"


class ServerProcess:
    """One ``xraptor run pg_chat_app:app`` process."""

    def __init__(self, antenna: str) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xraptor", "run", "pg_chat_app:app", "--antenna", antenna,
             "--port", str(self.port), "--log-level", "WARNING"],
            cwd=HERE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                self.health()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("xraptor run did not serve /health") from None
                time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        """The /health document (served with status 503 while the antenna is down)."""
        return health(self.port, timeout=2)[1]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def two_servers(pg_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    first = ServerProcess(pg_url)
    try:
        second = ServerProcess(pg_url)
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


async def _send(client: Client, room: str, origin: str, text: str) -> Response:
    return await client.post(SEND, {"chat_id": room, "client_id": origin, "message": text})


async def _settle(members: list[Member], sender: Client, room: str) -> None:
    """Post probes until every member receives them: the room is live everywhere."""
    for attempt in range(100):
        await _send(sender, room, "probe", f"probe-{attempt}")
        if await _until(lambda: all(m.texts("probe") for m in members), 0.2):
            return
    raise AssertionError("the room never became live on every member")


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
        await _settle(members, a, room)
        expected = []
        for i in range(10):
            sender, origin = (a, "alice") if i % 2 == 0 else (b, "bob")
            # every third one is past NOTIFY's 8000 bytes (chunked), one holds a NUL
            text = f"hello {i} " + ("\x00" if i == 5 else "") + ("🦖" * 5000 if i % 3 == 0 else "")
            expected.append(text)
            await _send(sender, room, origin, text)
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
        await _settle([ma, mb], a, room)
        private_pg.stop()
        try:
            for server in (first, second):
                assert await _until(lambda s=server: s.health()["antenna"]["state"] == "down")
        finally:
            private_pg.start()
        assert await _until(lambda: ma.gaps >= 1 and mb.gaps >= 1, 15)
        for server in (first, second):
            assert await _until(lambda s=server: s.health()["antenna"]["state"] == "up", 10)
        await _send(b, room, "erin", "after the outage")
        assert await _until(
            lambda: "after the outage" in ma.texts() and "after the outage" in mb.texts()
        )
