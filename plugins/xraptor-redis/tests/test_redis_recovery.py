"""Recovery on Redis (issue 12), with private redis-servers and real clients:

* Redis with persistence (``appendonly yes``, ``appendfsync always``) killed and restarted
  while a publisher posts: every acknowledged POST reaches the subscriber, in order, once,
  and no notice at all (the rooms catch up from their history);
* the same without persistence: one ``unrecovered`` notice per room, then live messages;
* a subscriber that comes back on another server process sharing Redis, with ``since``,
  gets what it missed, then the live messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis_history_server import history_app
from redis_support import EXTERNAL_URL, REDIS_BINARY, RedisServer, _no_backend, script_process

from xraptor import Client, ClientError, Response, XRaptor
from xraptor.client import Stream
from xraptor.testing import ServerProcess

SERVER = Path(__file__).with_name("redis_history_server.py")


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server that persists every write before answering it."""
    if REDIS_BINARY is None:
        if EXTERNAL_URL:
            pytest.skip("restarting Redis needs redis-server on PATH")
        _no_backend("no redis-server on PATH and XRAPTOR_REDIS_URL is not set")
    server = RedisServer(persist_in=str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@asynccontextmanager
async def serving(url: str) -> AsyncIterator[str]:
    app = history_app(url)
    await app.start()
    try:
        yield f"ws://127.0.0.1:{app.port}"
    finally:
        await app.close()


class Collector:
    """Reads a stream in the background: its pushes, in order."""

    def __init__(self, stream: Stream) -> None:
        self.pushes: list[Response] = []
        self._task = asyncio.ensure_future(self._collect(stream))

    async def _collect(self, stream: Stream) -> None:
        async for push in stream:
            self.pushes.append(push)

    def texts(self, room: str | None = None) -> list[str]:
        return [
            p.payload
            for p in self.pushes
            if "notice" not in p.header and (room is None or p.header.get("room") == room)
        ]

    def notices(self) -> list[tuple[str, str | None]]:
        return [
            (p.header["notice"], p.header.get("room")) for p in self.pushes if "notice" in p.header
        ]

    async def until(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {len(self.pushes)} pushes: {self.notices()}")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._task.cancel()


async def say(client: Client, room: str, text: str) -> bool:
    """POST the text to the room; whether the server acknowledged it."""
    try:
        await client.post("/say", {"room": room, "text": text})
    except (ClientError, TimeoutError):
        return False
    return True


async def post_steadily(
    client: Client, rooms: list[str], count: int, restart: Callable[[], None]
) -> dict[str, list[str]]:
    """Post ``count`` messages to each room, one every few milliseconds; restart Redis
    (in a thread: the server answers meanwhile) after a third of them. The acknowledged
    texts, per room."""
    acked: dict[str, list[str]] = {room: [] for room in rooms}
    restarting: asyncio.Future[None] | None = None
    for i in range(count):
        if i == count // 3:
            restarting = asyncio.get_running_loop().run_in_executor(None, restart)
        for room in rooms:
            text = f"{room}/{i}"
            if await say(client, room, text):
                acked[room].append(text)
        await asyncio.sleep(0.005)
    assert restarting is not None
    await restarting
    return acked


def in_order_once(texts: list[str]) -> bool:
    numbers = [int(text.rpartition("/")[2]) for text in texts]
    return numbers == sorted(set(numbers))


async def test_with_persistence_every_acknowledged_post_arrives_without_a_notice(
    persistent_redis: RedisServer,
) -> None:
    rooms = ["chat:kept"]
    async with (
        serving(persistent_redis.url) as url,
        Client(url) as member,
        Client(url) as poster,
        member.subscribe("/room", {"rooms": rooms}) as stream,
    ):
        collector = Collector(stream)
        acked = await post_steadily(poster, rooms, 300, persistent_redis.restart)
        # messages kept coming after the restart: the outage fell in the middle
        assert acked["chat:kept"][-1] == "chat:kept/299"
        assert len(acked["chat:kept"]) < 300, "no POST failed: did Redis restart at all?"
        last = acked["chat:kept"][-1]
        await collector.until(lambda: last in collector.texts())
        await asyncio.sleep(0.2)
        collector.stop()
    got = collector.texts()
    assert collector.notices() == []
    assert set(acked["chat:kept"]) <= set(got)
    assert in_order_once(got)
    # whatever arrived was posted (a POST whose answer the restart cut may be in the
    # history without its acknowledgment: it arrives, it was not acknowledged)
    assert set(got) <= {f"chat:kept/{i}" for i in range(300)}


async def test_without_persistence_each_room_gets_one_unrecovered_notice_then_live(
    redis_server: RedisServer,
) -> None:
    rooms = ["chat:a", "chat:b"]
    async with (
        serving(redis_server.url) as url,
        Client(url) as member,
        Client(url) as poster,
        member.subscribe("/room", {"rooms": rooms}) as stream,
    ):
        collector = Collector(stream)
        acked = await post_steadily(poster, rooms, 150, redis_server.restart)
        for room in rooms:
            assert acked[room][-1] == f"{room}/149"
            await collector.until(lambda r=room: f"{r}/149" in collector.texts(r))  # type: ignore[misc]
        await asyncio.sleep(0.2)
        collector.stop()
    assert sorted(collector.notices()) == [("unrecovered", "chat:a"), ("unrecovered", "chat:b")]
    for room in rooms:
        notice = next(
            i
            for i, p in enumerate(collector.pushes)
            if p.header.get("notice") and p.header["room"] == room
        )
        before = [p for p in collector.pushes[:notice] if p.header.get("room") == room]
        after = [p for p in collector.pushes[notice + 1 :] if p.header.get("room") == room]
        assert before and after, "the notice fell in the middle of the room's messages"
        epochs_before = {p.header["position"].partition(":")[0] for p in before}
        epochs_after = {p.header["position"].partition(":")[0] for p in after}
        assert len(epochs_before) == len(epochs_after) == 1 and epochs_before != epochs_after
        assert in_order_once(collector.texts(room))


@pytest.fixture
def two_processes(redis_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with script_process(SERVER, redis_url) as first, script_process(SERVER, redis_url) as second:
        yield first, second


async def take(stream: Stream, count: int) -> list[Response]:
    return [await asyncio.wait_for(anext(stream), 10) for _ in range(count)]


async def test_since_recovers_on_another_process(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_processes
    room = f"chat:moving-{time.monotonic_ns()}"
    async with Client(second.url) as poster:
        async with (
            Client(first.url) as member,
            member.subscribe("/room", {"rooms": [room]}) as stream,
        ):
            for i in range(5):
                assert await say(poster, room, f"{room}/{i}")
            seen = await take(stream, 5)
            positions = dict(stream.positions)
        for i in range(5, 10):  # while the member is away
            assert await say(poster, room, f"{room}/{i}")
        async with (
            Client(second.url) as member,
            member.subscribe("/room", {"rooms": [room]}, since=positions) as stream,
        ):
            missed = await take(stream, 5)
            assert await say(poster, room, f"{room}/10")
            live = await take(stream, 1)
    texts = [push.payload for push in seen + missed + live]
    assert texts == [f"{room}/{i}" for i in range(11)]
    assert all("notice" not in push.header for push in missed + live)


@asynccontextmanager
async def started(url: str) -> AsyncIterator[XRaptor]:
    app = history_app(url)
    await app.start()
    try:
        yield app
    finally:
        await app.close()


async def caught_up(app: XRaptor, gaps_before: int) -> None:
    """Wait until ``app``'s antenna resubscribed (it reported a gap) and its rooms read
    their history."""
    deadline = time.monotonic() + 20
    while app.antenna.gap_round == gaps_before or app.antenna.state != "up":
        assert time.monotonic() < deadline, "the antenna did not come back"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)


async def test_a_quiet_room_gets_no_notice_after_a_restart_that_missed_nothing(
    persistent_redis: RedisServer,
) -> None:
    """Rooms that delivered nothing yet (one with older history, one never posted to)
    start from where their history stood: a restart of Redis (with persistence) during
    which nothing was posted gives no notice."""
    async with started(persistent_redis.url) as app, Client(f"ws://127.0.0.1:{app.port}") as poster:
        assert await say(poster, "chat:older", "before the room opened")
        async with (
            Client(f"ws://127.0.0.1:{app.port}") as member,
            member.subscribe("/room", {"rooms": ["chat:older", "chat:never"]}) as stream,
        ):
            collector = Collector(stream)
            gaps = app.antenna.gap_round
            await asyncio.get_running_loop().run_in_executor(None, persistent_redis.restart)
            await caught_up(app, gaps)
            assert await say(poster, "chat:older", "chat:older/0")
            assert await say(poster, "chat:never", "chat:never/0")
            await collector.until(lambda: len(collector.pushes) >= 2)
            await asyncio.sleep(0.2)
            collector.stop()
    assert collector.notices() == []
    assert collector.texts() == ["chat:older/0", "chat:never/0"]


async def test_a_quiet_room_catches_up_what_was_posted_while_its_process_was_away(
    persistent_redis: RedisServer,
) -> None:
    """A quiet room, Redis restarted (with persistence), another process posting from
    the moment Redis is back: whatever the member's process did not receive live comes
    from the history; every acknowledged post arrives once, in order, without a notice."""
    rooms = ["chat:quiet", "chat:fresh"]
    async with (
        started(persistent_redis.url) as app,
        started(persistent_redis.url) as publisher,
        Client(f"ws://127.0.0.1:{publisher.port}") as poster,
    ):
        assert await say(poster, "chat:quiet", "before the room opened")
        async with (
            Client(f"ws://127.0.0.1:{app.port}") as member,
            member.subscribe("/room", {"rooms": rooms}) as stream,
        ):
            collector = Collector(stream)
            persistent_redis.kill()
            acked: dict[str, list[str]] = {room: [] for room in rooms}
            deadline = time.monotonic() + 20
            restart = asyncio.get_running_loop().run_in_executor(None, persistent_redis.start)
            while not all(acked.values()):  # post from the first moment Redis answers
                assert time.monotonic() < deadline, "Redis did not come back"
                for room in rooms:
                    text = f"{room}/{len(acked[room])}"
                    if await say(poster, room, text):
                        acked[room].append(text)
            await restart
            for i in range(1, 20):
                for room in rooms:
                    text = f"{room}/{i}"
                    assert await say(poster, room, text)
                    acked[room].append(text)
            for room in rooms:
                last = acked[room][-1]
                await collector.until(lambda r=room, t=last: t in collector.texts(r))  # type: ignore[misc]
            await asyncio.sleep(0.2)
            collector.stop()
    assert collector.notices() == []
    for room in rooms:
        assert collector.texts(room) == acked[room]
