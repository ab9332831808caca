"""The NATS antenna on a 3-member NATS cluster (routes, full mesh) on loopback.

Antennas connect to different members, as processes of one app spread over a
cluster would: the contract holds across members (the conformance suite), a
publish right after ``watch()`` returned on a process connected to another member
is delivered, ``is_alive`` sees watchers on other members, and a process whose
member dies moves to another one with a gap notice.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
from nats_cluster_support import NatsCluster
from nats_support import chat_process, nats_binary
from test_nats_e2e import Ws, _chat, _join
from websockets.asyncio.client import connect

from xraptor import Antenna
from xraptor.testing import AntennaConformance, BackendFault, ResourceCounter, ServerProcess
from xraptor_nats.antenna import NatsAntenna


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    binary = nats_binary()
    if binary is None:
        reason = "a local NATS cluster needs the nats-server binary"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    cluster = NatsCluster(binary)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def running_cluster(cluster: NatsCluster) -> NatsCluster:
    """The module's cluster with every member up (a test may have killed one)."""
    for member in cluster.members:
        if not member.server.running:
            member.server.start()
    cluster.wait_formed()
    return cluster


def _antenna(url: str, **options: object) -> NatsAntenna:
    """An antenna whose first connection goes to the member at ``url`` (it learns the
    others from the server, for reconnecting)."""
    return NatsAntenna(servers=url, name=f"xrcl-{uuid.uuid4().hex[:12]}", **options)


class TestNatsClusterConformance(AntennaConformance):
    """The contract, each new antenna connected to the next member in turn."""

    @pytest.fixture
    def antenna_factory(self, running_cluster: NatsCluster) -> Callable[[], NatsAntenna]:
        urls = itertools.cycle(running_cluster.urls)
        return lambda: _antenna(next(urls))

    @pytest.fixture
    def backend_fault(self, running_cluster: NatsCluster) -> Iterator[BackendFault]:
        def stop() -> None:
            for member in running_cluster.members:
                member.server.kill()

        yield BackendFault(stop=stop, start=running_cluster.start)

    @pytest.fixture
    def antenna_resources(self, running_cluster: NatsCluster) -> ResourceCounter:
        return lambda antenna: _held(running_cluster, antenna)


async def _held(cluster: NatsCluster, antenna: Antenna) -> dict[str, int]:
    """What ``antenna`` holds on every member: its connection and its probe connections
    (named after it), and their subscriptions."""
    name = str(antenna.options["name"])
    counts = {"connections": 0, "subscriptions": 0}
    for member in cluster.members:
        listing = await asyncio.to_thread(member.monitor, "connz?limit=100000")
        for connection in listing.get("connections", []):  # type: ignore[union-attr]
            if str(connection.get("name", "")).startswith(name):
                counts["connections"] += 1
                counts["subscriptions"] += int(connection.get("subscriptions", 0))
    return counts


@pytest_asyncio.fixture
async def pair(running_cluster: NatsCluster) -> AsyncIterator[tuple[Antenna, Antenna]]:
    """Two antennas connected to two different members."""
    first, second = running_cluster.urls[:2]
    async with _antenna(first) as one, _antenna(second) as two:
        yield one, two


async def test_a_publish_right_after_watch_reaches_a_watcher_on_another_member(
    pair: tuple[Antenna, Antenna],
) -> None:
    """``watch()`` returns once every member routes the channel to this process: a
    post from a process on another member, made the moment it returned, arrives."""
    watcher, poster = pair
    missed = []
    for i in range(200):
        channel = f"fresh-{uuid.uuid4().hex}-{i}"
        async with watcher.subscribe(channel) as sub:
            await poster.post(channel, f"m{i}")
            try:
                async with asyncio.timeout(2):
                    got = await sub.__anext__()
            except TimeoutError:
                missed.append(i)
                continue
            assert got == f"m{i}"
    assert not missed, f"{len(missed)} of 200 posts made right after watch() were lost: {missed}"


async def test_is_alive_across_members_at_once(pair: tuple[Antenna, Antenna]) -> None:
    """Once ``watch()`` (``unwatch()``) returned on one member, a process on another
    member sees the channel alive (not alive) straight away, not eventually."""
    watcher, asker = pair
    wrong = []
    for i in range(50):
        channel = f"alive-{uuid.uuid4().hex}-{i}"
        async with watcher.subscribe(channel):
            if await asker.is_alive(channel) is not True:
                wrong.append((i, "not alive while watched"))
        if await asker.is_alive(channel) is not False:
            wrong.append((i, "alive after unwatch returned"))
    assert not wrong, wrong


async def test_losing_the_member_moves_to_another_with_a_gap(
    running_cluster: NatsCluster,
) -> None:
    """kill -9 of the member a process talks to: it reconnects to another member,
    reports a gap for its channels, and delivers again within 5 s."""
    doomed, other = running_cluster.members[0], running_cluster.members[1]
    channel = f"survive-{uuid.uuid4().hex}"
    async with (
        _antenna(doomed.url, reconnect_time_wait=0.2) as watcher,
        _antenna(other.url) as poster,
        watcher.subscribe(channel) as sub,
    ):
        await poster.post(channel, "before")
        assert await asyncio.wait_for(sub.__anext__(), 5) == "before"
        gaps_before = sub.gaps
        doomed.server.kill()
        killed = time.monotonic()
        deadline = killed + 5
        while sub.gaps == gaps_before:
            assert time.monotonic() < deadline, "no gap reported within 5 s of the kill"
            await asyncio.sleep(0.05)
        assert watcher.state == "up"
        await poster.post(channel, "after")
        assert await asyncio.wait_for(sub.__anext__(), deadline - time.monotonic()) == "after"
        assert time.monotonic() - killed < 5


async def test_connections_stay_bounded_by_the_members(running_cluster: NatsCluster) -> None:
    """However many rooms a process watches, it holds one connection per member: its
    own and a probe connection to each other member."""
    async with _antenna(running_cluster.urls[0]) as antenna:
        before = await _held(running_cluster, antenna)
        subs = [antenna.subscribe(f"bounded-{uuid.uuid4().hex}-{i}") for i in range(200)]
        for sub in subs:
            await sub.open()
        during = await _held(running_cluster, antenna)
        for sub in subs:
            await sub.aclose()
    assert before["connections"] == during["connections"] == len(running_cluster.members)
    assert during["subscriptions"] >= before["subscriptions"] + 200


@pytest.fixture
def processes(running_cluster: NatsCluster) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two chat server processes, each connected first to a member of its own."""
    with (
        chat_process(running_cluster.urls[0]) as one,
        chat_process(running_cluster.urls[1]) as two,
    ):
        yield one, two


async def test_a_room_spans_processes_on_two_members(
    processes: tuple[ServerProcess, ServerProcess],
) -> None:
    one, two = processes
    async with (
        connect(f"ws://127.0.0.1:{one.port}") as ws_a,
        connect(f"ws://127.0.0.1:{two.port}") as ws_b,
    ):
        a, b = Ws(ws_a), Ws(ws_b)
        for i in range(20):  # each join followed at once by a post from the other member
            room = f"room-{uuid.uuid4().hex}-{i}"
            await a.send(f"a-sub-{i}", "/chat_messages", "SUB", {"chat_id": room})
            await a.sync()
            await b.send(
                f"post-{i}",
                "/send_message_to_chat_room",
                "POST",
                {"chat_id": room, "client_id": "bob", "message": f"hi {i}"},
            )
            push = await a.wait_for(f"a-sub-{i}", _chat)
            assert f"hi {i}" in push["payload"]
            await b.wait_for(f"post-{i}")


async def test_a_stream_resumes_when_its_member_dies(
    running_cluster: NatsCluster, processes: tuple[ServerProcess, ServerProcess]
) -> None:
    """kill -9 of the member the first process talks to: its stream gets a gap notice
    and carries the room's messages again within 5 s."""
    one, two = processes
    async with (
        connect(f"ws://127.0.0.1:{one.port}") as ws_a,
        connect(f"ws://127.0.0.1:{two.port}") as ws_b,
    ):
        a, b = Ws(ws_a), Ws(ws_b)
        room = f"survive-{uuid.uuid4().hex}"
        await _join(a, b, room)
        running_cluster.members[0].server.kill()
        killed = time.monotonic()
        await a.wait_for("a-sub", lambda m: "gap" in str(m.get("header", {})), 5)
        resumed = False
        while not resumed and time.monotonic() - killed < 5:
            await b.send(
                "b-post",
                "/send_message_to_chat_room",
                "POST",
                {"chat_id": room, "client_id": "bob", "message": "after"},
            )
            await b.wait_for("b-post")
            try:
                await a.wait_for("a-sub", _chat, 0.5)
                resumed = True
            except TimeoutError:
                pass
        assert resumed, "no message reached the stream within 5 s of losing its member"
