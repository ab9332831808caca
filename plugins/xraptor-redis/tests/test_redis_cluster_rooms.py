"""Rooms with history and presence on a local Redis Cluster (3 masters, 3 replicas): the
capabilities' conformance suites, unchanged; where a room's keys live; a stale topology
(``MOVED``); a slot migration done by hand (``ASK`` redirects); a killed or frozen master
under a room that keeps history, and under a quiet one; presence across two server
processes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from cluster_support import LocalCluster
from redis.crc import key_slot
from test_redis_recovery import Collector, say, serving

from xraptor import AntennaUnavailable, Client, Gap
from xraptor.client import Stream
from xraptor.history import HistoryPolicy, Position
from xraptor.testing import HistoryConformance, PresenceConformance
from xraptor.testing.presence_server import PresenceProcess, check_presence_across_processes
from xraptor_redis.antenna import RedisAntenna
from xraptor_redis.cluster import route
from xraptor_redis.cluster_antenna import RedisClusterAntenna
from xraptor_redis.history import DEFAULT_PREFIX, RedisHistory
from xraptor_redis.presence import room_keys

OPTIONS = {"reconnect_max_delay": 0.5}
#: as the rooms of the app the tests serve (redis_history_server.py)
POLICY = HistoryPolicy(size=10_000)


class TestRedisClusterHistory(HistoryConformance):
    @pytest.fixture
    def antenna_factory(self, redis_cluster: LocalCluster) -> Callable[[], RedisAntenna]:
        return lambda: RedisAntenna(url=redis_cluster.url, **OPTIONS)


class TestRedisClusterPresence(PresenceConformance):
    @pytest.fixture
    def antenna_factory(self, redis_cluster: LocalCluster) -> Callable[[], RedisAntenna]:
        return lambda: RedisAntenna(url=redis_cluster.url, **OPTIONS)


@contextlib.asynccontextmanager
async def member_and_poster(url: str, room: str) -> AsyncIterator[tuple[Stream, Client]]:
    """Two app processes on the cluster at ``url``: a member of ``room`` on one (its
    stream), and a poster connected to the other."""
    async with (
        serving(url) as member_url,
        serving(url) as poster_url,
        Client(member_url) as member,
        Client(poster_url) as poster,
        member.subscribe("/room", {"rooms": [room]}) as stream,
    ):
        yield stream, poster


# ----- where a room's keys live -------------------------------------------------------


async def test_a_rooms_history_shares_its_channels_slot(redis_cluster: LocalCluster) -> None:
    """The stream, the epoch hash and the sharded channel of a room hash to one slot,
    whatever braces the room id holds: the append script may touch all three."""
    history = RedisHistory(DEFAULT_PREFIX)
    for room in ("plain", "{braced}", "a{b}c", "}{", "é 🦖"):
        stream, meta = history.keys(room)
        wire, slot = route(room)
        assert key_slot(stream.encode()) == key_slot(meta.encode()) == slot
        assert key_slot(wire.encode()) == slot
    room = f"kept-{uuid.uuid4().hex[:8]}"
    async with RedisAntenna(url=redis_cluster.url, **OPTIONS) as antenna:
        await antenna.publish_with_history(room, "hello", POLICY)
    owner = redis_cluster.master_of(route(room)[0])
    stream, meta = history.keys(room)
    assert redis_cluster.client(owner).exists(stream, meta) == 2


async def test_a_stale_topology_is_corrected_for_history_and_presence(
    redis_cluster: LocalCluster,
) -> None:
    """When the antenna believes the wrong master serves a room (a stale view), the
    ``MOVED`` replies to its append, its read and its presence scripts correct it: each
    is served by the right master, and the subscriber gets the message with its
    position."""
    room = f"stale-{uuid.uuid4().hex[:6]}"
    slot = route(room)[1]
    presence_slot = key_slot(room_keys("xraptor:presence:", room)[0].encode())
    owner = redis_cluster.owner_of_slot(slot)
    async with (
        RedisAntenna(url=redis_cluster.url, **OPTIONS) as antenna,
        RedisAntenna(url=redis_cluster.url, **OPTIONS) as subscriber,
        subscriber.subscribe(room) as sub,
    ):
        assert isinstance(antenna, RedisClusterAntenna)
        for wrong_slot in (slot, presence_slot):
            right = redis_cluster.owner_of_slot(wrong_slot)
            wrong = next(port for port in redis_cluster.masters() if port != right)
            antenna.topology.learn(wrong_slot, ("127.0.0.1", wrong))
        first = await antenna.publish_with_history(room, "one", POLICY)
        assert antenna.topology.owner(slot) == ("127.0.0.1", owner)
        second = await antenna.publish_with_history(room, "two", POLICY)
        events = sub.events()
        assert [await asyncio.wait_for(events.__anext__(), 5) for _ in range(2)] == ["one", "two"]
        antenna.topology.learn(
            slot, ("127.0.0.1", next(p for p in redis_cluster.masters() if p != owner))
        )
        history = await antenna.read_history(room, first)
        assert history is not None and [(e.message, e.position) for e in history] == [
            ("two", second)
        ]
        await antenna.presence_set(room, {"c:1": '"one"'})
        assert await subscriber.presence_list(room) == {"c:1": '"one"'}
        assert antenna.topology.owner(presence_slot) == (
            "127.0.0.1",
            redis_cluster.owner_of_slot(presence_slot),
        )
        await antenna.presence_remove(room, ["c:1"])


# ----- a slot migration mid-way: ASK ----------------------------------------------------


def _channel_in_slot(slot: int, prefix: str) -> str:
    """A channel name whose sharded channel hashes to ``slot``."""
    for i in range(1_000_000):
        channel = f"{prefix}-{i}"
        if route(channel)[1] == slot:
            return channel
    raise AssertionError(f"no channel of slot {slot} found")


async def test_history_publish_and_presence_work_while_a_slot_migrates(
    redis_cluster: LocalCluster,
) -> None:
    """A room's slot is migrated by hand (SETSLOT IMPORTING / MIGRATING, MIGRATE of its
    keys, SETSLOT NODE). Mid-way, once its keys are on the importing node, appends and
    reads get ``ASK`` and are served there (after ``ASKING``); a plain publish to a
    channel of that slot is served by the old master and delivered live. The member of
    the room, served by an app on the cluster, gets every message in order, without a
    notice: those appended on the importing node from the history, at once (their
    publisher tells the subscribers on the old master), and after the migration ended.
    A new room's first append mid-way gets TRYAGAIN; a channel watched mid-way is
    subscribed on the old master, and moved with a gap when the migration ends."""
    room = f"chat:ask-{uuid.uuid4().hex[:8]}"
    slot = route(room)[1]
    plain = _channel_in_slot(slot, f"plain-{uuid.uuid4().hex[:6]}")
    async with (
        serving(redis_cluster.url) as url,
        Client(url) as member,
        Client(url) as poster,
        member.subscribe("/room", {"rooms": [room]}) as stream,
        RedisAntenna(url=redis_cluster.url, **OPTIONS) as antenna,
        antenna.subscribe(plain) as plain_sub,
    ):
        collector = Collector(stream)
        texts = [f"{room}/{i}" for i in range(10)]
        for text in texts[:2]:
            assert await say(poster, room, text)
        await collector.until(lambda: collector.texts() == texts[:2])
        first = Position.parse(collector.pushes[0].header["position"])
        target = next(p for p in redis_cluster.masters() if p != redis_cluster.owner_of_slot(slot))
        source = redis_cluster.begin_migration(slot, target)
        assert await say(poster, room, texts[2])  # its keys are on the old master still
        await collector.until(lambda: collector.texts() == texts[:3])
        moved = redis_cluster.move_keys(slot, source, target)
        assert sorted(moved) == sorted(RedisHistory(DEFAULT_PREFIX).keys(room))
        for text in texts[3:6]:  # ASK: appended on the importing node
            assert await say(poster, room, text)
        position = await antenna.publish_with_history(room, texts[6], POLICY)
        assert position.epoch == first.epoch
        # the appends ran on the importing node: the old master has no key of the slot
        assert redis_cluster.client(source).cluster("COUNTKEYSINSLOT", slot) == 0
        assert redis_cluster.client(target).cluster("COUNTKEYSINSLOT", slot) == 2
        # the members are told on the old master, and catch up from the history at once
        await collector.until(lambda: collector.texts() == texts[:7], timeout=5)
        history = await antenna.read_history(room, first)  # ASK too
        assert history is not None
        assert [entry.message for entry in history] == texts[1:7]
        assert history[-1].position == position
        await antenna.publish(plain, "served by the old master")
        assert await asyncio.wait_for(plain_sub.__anext__(), 5) == "served by the old master"
        assert await antenna.is_alive(plain)  # PUBSUB SHARDNUMSUB on the old master
        # a new room of the slot: its keys are on neither node, its first append gets
        # TRYAGAIN from the importing node until the migration ended (Redis serves a
        # multi-key command there only when it holds all its keys)
        fresh = _channel_in_slot(slot, f"fresh-{uuid.uuid4().hex[:6]}")
        started = time.monotonic()
        with pytest.raises(AntennaUnavailable, match="TRYAGAIN"):
            await antenna.publish_with_history(fresh, "first", POLICY)
        assert time.monotonic() - started < 1.5
        # a channel of the slot watched mid-way: subscribed on the old master as well (it
        # gets the old master's sunsubscribe when the migration ends)
        late = _channel_in_slot(slot, f"late-{uuid.uuid4().hex[:6]}")
        async with antenna.subscribe(late) as late_sub:
            await antenna.publish(late, "late")
            assert await asyncio.wait_for(late_sub.__anext__(), 5) == "late"
            assert redis_cluster.owner_of_slot(slot) == source
            redis_cluster.end_migration(slot, target)
            # the old master unsubscribes it: subscribed on the new one, with a gap
            events = late_sub.events()
            assert await asyncio.wait_for(events.__anext__(), 10) == Gap(late)
            await antenna.publish(late, "moved")
            assert await asyncio.wait_for(events.__anext__(), 5) == "moved"
        fresh_at = await antenna.publish_with_history(fresh, "first", POLICY)
        assert await antenna.read_history(fresh, fresh_at) == []
        await collector.until(lambda: collector.texts() == texts[:7])
        for text in texts[7:]:
            assert await say(poster, room, text)
        await collector.until(lambda: collector.texts() == texts)
        collector.stop()
        assert collector.notices() == []
        pushed = [p.header["position"] for p in collector.pushes]
        assert pushed == sorted(pushed, key=lambda p: Position.parse(p).offset)


async def test_presence_works_while_its_slot_migrates(redis_cluster: LocalCluster) -> None:
    """Presence keys of a room on a migrating slot: set, listed, expired and removed
    through ``ASK`` once they are on the importing node; still there once it ended."""
    prefix = f"xrtest:presence:{uuid.uuid4().hex[:8]}:"
    room = "chat:migrating presence"
    zset, table = room_keys(prefix, room)
    slot = key_slot(zset.encode())
    async with RedisAntenna(url=redis_cluster.url, presence_prefix=prefix, **OPTIONS) as antenna:
        await antenna.presence_set(room, {"c:1": '"one"'})
        target = next(p for p in redis_cluster.masters() if p != redis_cluster.owner_of_slot(slot))
        source = redis_cluster.begin_migration(slot, target)
        await antenna.presence_set(room, {"c:2": '"two"'})  # on the old master still
        assert sorted(redis_cluster.move_keys(slot, source, target)) == sorted([zset, table])
        await antenna.presence_set(room, {"c:3": '"three"'})
        assert await antenna.presence_list(room) == {
            "c:1": '"one"',
            "c:2": '"two"',
            "c:3": '"three"',
        }
        await antenna.presence_remove(room, ["c:2"])
        assert await antenna.presence_expire(room) == {}
        assert redis_cluster.client(source).cluster("COUNTKEYSINSLOT", slot) == 0
        assert redis_cluster.client(target).cluster("COUNTKEYSINSLOT", slot) == 2
        redis_cluster.end_migration(slot, target)
        assert await antenna.presence_list(room) == {"c:1": '"one"', "c:3": '"three"'}
        await antenna.presence_remove(room, ["c:1", "c:3"])
        assert await antenna.presence_list(room) == {}


# ----- failover -------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_a_room_with_history_loses_nothing_when_its_master_fails(
    own_redis_cluster: LocalCluster, fault: str
) -> None:
    """Two app processes on the cluster: a member of a room with history on one, a poster
    on the other, posting all along. The master of the room's slot is killed (-9), or
    frozen (SIGSTOP, as a machine cut off), once
    what it acknowledged reached its replica (a quiet moment: Redis replicates
    asynchronously); its replica takes over. The member gets every message the room's
    history holds, in order, once, and no notice: what was posted while its subscription
    moved to the new master comes from the history, not as a gap; the first post the new
    master took reaches the member within 5 s."""
    cluster = own_redis_cluster
    room = f"chat:failover-{uuid.uuid4().hex[:8]}"
    async with member_and_poster(cluster.url, room) as (stream, poster):
        collector = Collector(stream)
        acked: list[str] = []
        for i in range(20):
            if await say(poster, room, f"{room}/{i}"):
                acked.append(f"{room}/{i}")
            await asyncio.sleep(0.005)
        await collector.until(lambda: collector.texts() == acked)
        await asyncio.sleep(0.2)  # the replica has it all
        master = cluster.master_of(route(room)[0])
        (cluster.kill_node if fault == "kill" else cluster.pause_node)(master)
        failed_at = time.monotonic()
        before = len(acked)
        promoted: list[float] = []  # when the first post after the fault was taken
        resumed: list[float] = []  # when the member got it

        async def watch_resume() -> None:
            while not (promoted and acked[before] in collector.texts()):
                await asyncio.sleep(0.01)
            resumed.append(time.monotonic())

        watcher = asyncio.ensure_future(watch_resume())
        i = 20
        while time.monotonic() - failed_at < 30 and (not promoted or len(acked) < before + 40):
            if await say(poster, room, f"{room}/{i}"):
                acked.append(f"{room}/{i}")
                if not promoted:
                    promoted.append(time.monotonic())
            i += 1
            await asyncio.sleep(0.01)
        assert promoted, "no post was taken after the fault within 30 s"
        await collector.until(lambda: acked[-1] in collector.texts())
        await asyncio.wait_for(watcher, 5)
        print(
            f"{fault}: the member got the first post taken after the fault "
            f"{resumed[0] - promoted[0]:.2f} s after it was taken"
        )
        assert resumed[0] - promoted[0] <= 5.0
        await asyncio.sleep(0.2)
        collector.stop()
        first = Position.parse(collector.pushes[0].header["position"])
        async with RedisAntenna(url=cluster.url, **OPTIONS) as reader:
            stored = await reader.read_history(room, first)
    assert stored is not None, "the history lost the first message"
    got = collector.texts()
    assert collector.notices() == []
    assert got == [f"{room}/0", *(entry.message for entry in stored)]
    assert set(acked) <= set(got)
    numbers = [int(text.rpartition("/")[2]) for text in got]
    assert numbers == sorted(set(numbers))


async def test_a_quiet_room_gets_no_notice_when_its_master_fails(
    own_redis_cluster: LocalCluster,
) -> None:
    """A member of a room that delivered nothing yet, its history empty (the epoch drawn
    when the room opened reached the replica); the room's master is killed, its replica
    takes over, a poster on another process posts from the first moment it can: the
    member gets every acknowledged post, in order, once, and no notice."""
    cluster = own_redis_cluster
    room = f"chat:quiet-{uuid.uuid4().hex[:8]}"
    async with member_and_poster(cluster.url, room) as (stream, poster):
        collector = Collector(stream)
        await asyncio.sleep(0.5)  # the replica has the room's epoch
        cluster.kill_node(cluster.master_of(route(room)[0]))
        failed_at = time.monotonic()
        acked: list[str] = []
        i = 0
        while time.monotonic() - failed_at < 30 and len(acked) < 20:
            if await say(poster, room, f"{room}/{i}"):
                acked.append(f"{room}/{i}")
            i += 1
            await asyncio.sleep(0.01)
        assert len(acked) == 20, "the replica did not take over within 30 s"
        await collector.until(lambda: acked[-1] in collector.texts())
        await asyncio.sleep(0.3)
        collector.stop()
    assert collector.notices() == []
    got = collector.texts()
    assert set(acked) <= set(got)
    numbers = [int(text.rpartition("/")[2]) for text in got]
    assert numbers == sorted(set(numbers))


# ----- presence across processes --------------------------------------------------------


async def test_presence_across_processes_on_the_cluster(redis_cluster: LocalCluster) -> None:
    """Two server processes on the cluster: members of both listed by each, join and
    leave notices across them, a process killed with SIGKILL unlisted within its
    ``presence_ttl`` (as on one server: test_redis_presence_e2e.py)."""
    ttl = 1.5
    options = {"presence_ttl": ttl, "presence_prefix": f"xrtest:p:{uuid.uuid4().hex[:12]}:"}
    with (
        PresenceProcess(redis_cluster.url, options) as first,
        PresenceProcess(redis_cluster.url, options) as second,
    ):
        gone, announced = await check_presence_across_processes(first, second, ttl=ttl)
    print(f"SIGKILL: unlisted after {gone:.2f} s, its leave announced after {announced:.2f} s")
