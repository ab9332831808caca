"""Redis Cluster mode: selection, bad input, bounded connections, slot moves, failover.

Failover tests run on a cluster of their own (they change which node is master);
the others share the module's cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
from cluster_support import LocalCluster

from xraptor import AntennaError, AntennaUnavailable, Gap, Subscription
from xraptor.plugins import resolve_antenna
from xraptor_redis.antenna import RedisAntenna
from xraptor_redis.cluster import route, slot_tag
from xraptor_redis.cluster_antenna import RedisClusterAntenna
from xraptor_redis.ratelimit import RedisRateLimit

OPTIONS = {"reconnect_max_delay": 0.5}


def _named(cluster: LocalCluster) -> tuple[str, str]:
    name = f"xrc-{uuid.uuid4().hex[:12]}"
    return f"{cluster.url}?client_name={name}", name


def _on_other_masters(cluster: LocalCluster, count: int, prefix: str) -> list[str]:
    """``count`` channel names whose slots are served by ``count`` different masters."""
    found: dict[int, str] = {}
    for i in range(10_000):
        channel = f"{prefix}-{i}"
        found.setdefault(cluster.master_of(route(channel)[0]), channel)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("the masters do not serve enough slots")


# ----- selection and bad input -------------------------------------------------------


def test_cluster_urls_and_option_select_cluster_mode() -> None:
    for url in ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "rediss+cluster://h:7000"):
        antenna = resolve_antenna(url)
        assert isinstance(antenna, RedisClusterAntenna)
    by_option = RedisAntenna(url="redis://127.0.0.1:7000/0", cluster=True)
    assert isinstance(by_option, RedisClusterAntenna)
    assert by_option.config.seeds == (("127.0.0.1", 7000),)
    assert type(RedisAntenna(url="redis://127.0.0.1:7000/0")) is RedisAntenna
    assert RedisAntenna.options_from_url("redis+cluster://h:1") == {
        "url": "redis+cluster://h:1",
        "cluster": True,
    }
    tls = RedisAntenna(url="rediss+cluster://a:7000,[::1]:7001?ssl_cert_reqs=none")
    assert isinstance(tls, RedisClusterAntenna)
    assert tls.config.seeds == (("a", 7000), ("::1", 7001))
    assert tls.config.connection_class.__name__ == "SSLConnection"
    # history and presence are kept in cluster mode too
    assert by_option.can_keep_history and by_option.can_keep_presence
    # credentials and options apply to every node; the antenna's own settings win; the
    # credentials never show
    named = RedisAntenna(url="redis+cluster://u:pw@a:7000,b:7001/?socket_timeout=9&client_name=x")
    assert isinstance(named, RedisClusterAntenna)
    assert named.config.connection_kwargs == {"username": "u", "password": "pw", "client_name": "x"}
    assert named.config.where == "redis+cluster://a:7000,b:7001"
    assert "pw" not in str(named.describe())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "redis+cluster://"}, "names no node"),
        ({"url": "redis+cluster://,"}, "names no node"),
        ({"url": "redis+cluster://h:port"}, "no valid port"),
        ({"url": "redis+cluster://h:7000/3"}, "only database 0"),
        ({"url": "unix:///tmp/redis.sock", "cluster": True}, "cannot use unix"),
        ({"url": "redis+cluster://h:7000", "cluster": False}, "contradicts"),
    ],
)
def test_bad_cluster_configuration_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisAntenna(**options)


async def test_cluster_mode_against_a_single_server_says_so(redis_url: str) -> None:
    antenna = RedisAntenna(url=redis_url, cluster=True)
    with pytest.raises(AntennaError, match="not a Redis Cluster"):
        await antenna.start()
    await antenna.close()


async def test_no_reachable_seed_is_unavailable() -> None:
    antenna = RedisAntenna(url="redis+cluster://127.0.0.1:1,127.0.0.1:2", publish_timeout=1)
    with pytest.raises(AntennaUnavailable, match="no node of the Redis Cluster"):
        await antenna.start()
    await antenna.close()


def test_slot_tag_is_a_hash_whatever_braces_the_name_holds() -> None:
    for name in ("room", "{room}", "a{b}c", "}{", ""):
        tag = slot_tag(name)
        assert tag.startswith("{") and tag.endswith("}") and "{" not in tag[1:-1]
        wire, _ = route(name)
        assert wire == tag + name
    assert route("{same}a")[1] != route("{same}b")[1] or slot_tag("{same}a") != slot_tag("{same}b")


# ----- connections and sharding --------------------------------------------------------


async def test_connections_stay_bounded_by_the_nodes_however_many_rooms(
    redis_cluster: LocalCluster,
) -> None:
    """200 rooms watched and published to: per node, one subscriber connection (on
    masters) and at most pool_size others; every room subscribed exactly once, on the
    master that serves it."""
    url, name = _named(redis_cluster)
    pool_size = 2
    rooms = [f"bounded-{uuid.uuid4().hex[:6]}-{i}" for i in range(200)]
    async with RedisAntenna(url=url, pool_size=pool_size, **OPTIONS) as antenna:
        subs = [antenna.subscribe(room) for room in rooms]
        await asyncio.gather(*(sub.open() for sub in subs))
        await asyncio.gather(*(antenna.post(room, "hello") for room in rooms))
        for sub in subs:
            assert await asyncio.wait_for(sub.__anext__(), 5) == "hello"
        mine = [c for c in redis_cluster.client_list() if c.get("name") == name]
        masters = redis_cluster.masters()
        per_node: dict[str, list[dict[str, str]]] = {}
        for client in mine:
            per_node.setdefault(client["node"], []).append(client)
        assert set(per_node) <= {str(port) for port in masters}, "only masters are used"
        for node, clients in per_node.items():
            subscribers = [c for c in clients if int(c.get("ssub", 0)) > 0]
            assert len(subscribers) == 1, f"node {node}: {len(subscribers)} subscriber connections"
            assert len(clients) <= 1 + pool_size, f"node {node}: {len(clients)} connections"
        assert len(mine) <= len(masters) * (1 + pool_size)
        assert sum(int(c.get("ssub", 0)) for c in mine) == len(rooms)
        for node, clients in per_node.items():
            expected = sum(redis_cluster.master_of(route(r)[0]) == int(node) for r in rooms)
            assert sum(int(c.get("ssub", 0)) for c in clients) == expected
        for sub in subs:
            await sub.aclose()
    assert [c for c in redis_cluster.client_list() if c.get("name") == name] == []


async def test_a_slot_moved_to_another_master_is_followed_with_a_gap(
    redis_cluster: LocalCluster,
) -> None:
    """Moving a watched channel's slot to another master (CLUSTER SETSLOT): Redis drops
    the subscription, the antenna resubscribes on the new master and reports a gap for
    that channel only; a channel on another slot sees no gap."""
    moved, steady = _on_other_masters(redis_cluster, 2, f"move-{uuid.uuid4().hex[:6]}")
    url, _ = _named(redis_cluster)
    async with (
        RedisAntenna(url=url, **OPTIONS) as antenna,
        RedisAntenna(url=redis_cluster.url, **OPTIONS) as other,
        antenna.subscribe(moved) as moved_sub,
        antenna.subscribe(steady) as steady_sub,
    ):
        await other.post(moved, "before")
        assert await asyncio.wait_for(moved_sub.__anext__(), 5) == "before"
        slot = route(moved)[1]
        source = redis_cluster.master_of(route(moved)[0])
        target = next(port for port in redis_cluster.masters() if port != source)
        ids = {port: redis_cluster.client(port).cluster("MYID") for port in (source, target)}
        redis_cluster.client(target).cluster("SETSLOT", slot, "IMPORTING", ids[source])
        redis_cluster.client(source).cluster("SETSLOT", slot, "MIGRATING", ids[target])
        for port in redis_cluster.masters():
            redis_cluster.client(port).cluster("SETSLOT", slot, "NODE", ids[target])
        events = moved_sub.events()
        assert await asyncio.wait_for(events.__anext__(), 10) == Gap(moved)
        deadline = time.monotonic() + 10
        for attempt in range(1000):
            with contextlib.suppress(AntennaUnavailable):
                await other.post(moved, f"after-{attempt}")
            with contextlib.suppress(TimeoutError):
                message = await asyncio.wait_for(events.__anext__(), 0.2)
                assert isinstance(message, str) and message.startswith("after-")
                break
            assert time.monotonic() < deadline, "the moved channel never resumed"
        assert redis_cluster.master_of(route(moved)[0]) == target
        await other.post(steady, "steady")
        assert await asyncio.wait_for(steady_sub.events().__anext__(), 5) == "steady"
        assert steady_sub.gaps == 0
        assert antenna.state == "up"


async def test_a_stale_topology_is_corrected_by_moved_replies(
    redis_cluster: LocalCluster,
) -> None:
    """When the antenna believes the wrong master serves a channel (a stale view), the
    ``MOVED`` replies correct it: ``watch`` still returns subscribed on the right
    master, and a publish is sent on to the right master and delivered."""
    room = f"stale-{uuid.uuid4().hex[:6]}"
    slot = route(room)[1]
    owner = redis_cluster.master_of(route(room)[0])
    wrong = ("127.0.0.1", next(port for port in redis_cluster.masters() if port != owner))
    async with (
        RedisAntenna(url=redis_cluster.url, **OPTIONS) as antenna,
        RedisAntenna(url=redis_cluster.url, **OPTIONS) as other,
    ):
        assert isinstance(antenna, RedisClusterAntenna)
        assert isinstance(other, RedisClusterAntenna)
        antenna.topology.learn(slot, wrong)
        async with antenna.subscribe(room) as sub:
            assert antenna.topology.owner(slot) == ("127.0.0.1", owner)
            subscribers = {
                c["node"] for c in redis_cluster.client_list() if int(c.get("ssub", 0)) > 0
            }
            assert str(owner) in subscribers
            other.topology.learn(slot, wrong)
            await other.post(room, "redirected")
            assert await asyncio.wait_for(sub.__anext__(), 5) == "redirected"
            assert other.topology.owner(slot) == ("127.0.0.1", owner)
            assert sub.gaps == 0


# ----- failover ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_a_failed_master_is_left_for_its_promoted_replica(
    own_redis_cluster: LocalCluster, fault: str
) -> None:
    """The master of a room's slot dies (kill -9) or freezes (SIGSTOP, as a machine cut
    off) mid-stream: the room resumes within 5 s of its replica's promotion, after one
    gap notice, in order; a room on another master goes on without a gap; ``state``
    stays ``up`` (other masters are reachable)."""
    cluster = own_redis_cluster
    room, other_room = _on_other_masters(cluster, 2, f"failover-{uuid.uuid4().hex[:6]}")
    url, _ = _named(cluster)
    options = {**OPTIONS, "topology_refresh_interval": 0.5, "publish_timeout": 1.0}
    received: dict[str, list[str | Gap]] = {room: [], other_room: []}
    resumed: list[float] = []
    states: list[str] = []
    async with (
        RedisAntenna(url=url, **options) as antenna,
        RedisAntenna(url=cluster.url, **options) as poster,
        antenna.subscribe(room) as sub,
        antenna.subscribe(other_room) as other_sub,
    ):

        async def collect(channel: str, subscription: Subscription) -> None:
            events = received[channel]
            async for event in subscription.events():
                if channel == room and not resumed and events and isinstance(events[-1], Gap):
                    resumed.append(time.monotonic())  # the first message after the gap
                events.append(event)

        async def post_forever(channel: str) -> None:
            for n in range(1_000_000):
                with contextlib.suppress(AntennaUnavailable):
                    await poster.post(channel, str(n))
                if antenna.state not in states[-1:]:
                    states.append(antenna.state)
                await asyncio.sleep(0.02)

        tasks = [
            asyncio.ensure_future(collect(room, sub)),
            asyncio.ensure_future(collect(other_room, other_sub)),
            asyncio.ensure_future(post_forever(room)),
            asyncio.ensure_future(post_forever(other_room)),
        ]
        try:
            assert await _until(lambda: len(received[room]) >= 5, 5)
            master = cluster.master_of(route(room)[0])
            (cluster.kill_node if fault == "kill" else cluster.pause_node)(master)
            promoted_at = await asyncio.to_thread(_promotion, cluster, room, master)
            assert await _until(lambda: bool(resumed), 10), (
                f"the room did not resume after the promotion: {received[room][-5:]}"
            )
            print(f"{fault}: room resumed {resumed[0] - promoted_at:.2f} s after the promotion")
            assert resumed[0] - promoted_at <= 5.0, (
                f"resumed {resumed[0] - promoted_at:.2f} s after the promotion"
            )
            before = len(received[other_room])
            assert await _until(lambda: len(received[other_room]) > before + 5, 5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        room_events = received[room]
        assert room_events.count(Gap(room)) == 1, room_events
        numbers = [int(e) for e in room_events if isinstance(e, str)]
        assert numbers == sorted(set(numbers)), "in order, each once"
        assert not [e for e in received[other_room] if isinstance(e, Gap)], (
            "a gap was reported for a room of a master that did not fail"
        )
        assert states == ["up"], f"state went {states}: other masters stayed reachable"


def _promotion(cluster: LocalCluster, channel: str, old: int) -> float:
    """Wait (in a thread) until another node serves ``channel``'s slot; return when."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if cluster.master_of(route(channel)[0], ask_not=old) != old:
                return time.monotonic()
        time.sleep(0.02)
    raise AssertionError("no replica was promoted within 30 s")


async def _until(condition: object, timeout: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# ----- the rate limiter -----------------------------------------------------------------


async def test_rate_limiter_counts_in_the_cluster(redis_cluster: LocalCluster) -> None:
    """``redis-rate-limit`` on a cluster URL: the budget is counted once per client id,
    ids with braces included, and shared by two limiters (two processes)."""
    scope = f"cluster-{uuid.uuid4().hex[:8]}"
    first = RedisRateLimit(limit=3, window=30, url=redis_cluster.url, scope=scope)
    second = RedisRateLimit(limit=3, window=30, url=redis_cluster.url, scope=scope)
    try:
        for client in ("plain", "{braced}", "a{b}c{d}"):
            counts = [(await limiter.hit(client))[0] for limiter in (first, second, first)]
            assert counts == [1, 2, 3]
            assert (await second.hit(client))[0] == 4
        keys = [
            key
            for port in redis_cluster.masters()
            for key in redis_cluster.client(port).keys(f"xraptor:ratelimit:{scope}:*")
        ]
        assert len(keys) == 3 and all(key.count("{") >= 1 for key in keys)
    finally:
        await first.aclose()
        await second.aclose()
