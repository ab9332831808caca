"""End to end on a Redis Cluster: two ``xraptor`` server processes share a local
cluster; a room spans both, its messages arrive exactly once, the rate limit is shared,
and killing the master of the room's slot gives every member one gap notice, then
the room works again on the promoted replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("xraptor.demo", reason="the core server's chat demo is not there yet")

from cluster_support import LocalCluster
from redis_support import script_process
from test_redis_e2e import SERVER

from xraptor import ClientError
from xraptor.testing import ServerProcess, until
from xraptor.testing.chat import members_on_both, send
from xraptor_redis.cluster import route


@pytest.fixture
def cluster_servers(
    own_redis_cluster: LocalCluster,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    scope = f"e2e-cluster-{time.monotonic_ns()}"
    env = {"XRAPTOR_TEST_LIMIT": "6", "XRAPTOR_TEST_SCOPE": scope}
    with (
        script_process(SERVER, own_redis_cluster.url, **env) as first,
        script_process(SERVER, own_redis_cluster.url, **env) as second,
    ):
        yield first, second


async def test_room_spans_two_processes_and_survives_its_master(
    cluster_servers: tuple[ServerProcess, ServerProcess], own_redis_cluster: LocalCluster
) -> None:
    first, second = cluster_servers
    room = "lobby"
    async with members_on_both(first, second, room) as (ma, mb):
        a, b = ma.client, mb.client
        expected = [f"hello {i}" for i in range(10)]
        for i, text in enumerate(expected):
            await send(a if i % 2 == 0 else b, room, "alice", text, who=f"sender-{i}")
        assert await until(lambda: all(len(m.texts("alice")) >= 10 for m in (ma, mb)), 10)
        await asyncio.sleep(0.3)  # nothing more arrives
        for member in (ma, mb):
            assert member.texts("alice") == expected  # exactly once, in order
        for server in (first, second):
            antenna = server.health()["antenna"]
            assert antenna["cluster"] is True and len(antenna["masters"]) == 3

        # the rate limit is counted in the cluster, shared by both processes
        for i in range(6):
            await send(a if i % 2 else b, "quiet", "carol", f"m{i}", who="carol")
        with pytest.raises(ClientError) as refused:
            await send(a, "quiet", "carol", "one too many", who="carol")
        assert refused.value.code == "rate_limited"

        own_redis_cluster.kill_node(own_redis_cluster.master_of(route(room)[0]))
        assert await until(lambda: ma.gaps >= 1 and mb.gaps >= 1, 15)
        for server in (first, second):
            assert server.health()["antenna"]["state"] == "up"
        sent = 0
        deadline = time.monotonic() + 10
        while not ("after" in ma.texts("erin") and "after" in mb.texts("erin")):
            assert time.monotonic() < deadline, "the room did not work again after the failover"
            # the publish may fail until the sender's process found the new master
            with contextlib.suppress(ClientError):
                await send(b, room, "erin", "after", who=f"erin-{sent}")
            sent += 1
            await until(lambda: "after" in ma.texts("erin") and "after" in mb.texts("erin"), 0.3)
        # one notice per channel of the failed shard: the room's, and the stream's own
        # channel when its slot is on the same master
        assert 1 <= ma.gaps <= 2 and 1 <= mb.gaps <= 2
