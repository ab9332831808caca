"""The antenna contract, unchanged, against a local Redis Cluster (3 masters, 3 replicas).

The fault (``backend_fault``) takes the whole cluster away: every node is killed
(-9) and started again with its ``nodes.conf``. Losing one master is not an outage
of the antenna (``state`` stays ``up``; see test_redis_cluster_failover.py): only
when no master can be reached is it ``down``. Resources are counted by Redis
itself, with ``CLIENT LIST`` on every node.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from cluster_support import LocalCluster

from xraptor import Antenna
from xraptor.testing import AntennaConformance, BackendFault, ResourceCounter
from xraptor_redis.antenna import RedisAntenna

#: reconnect promptly once the cluster is back
OPTIONS = {"reconnect_max_delay": 0.5}


def _client_name(antenna: Antenna) -> str:
    assert isinstance(antenna, RedisAntenna)
    return str(antenna.options["client_name"])


class TestRedisClusterConformance(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self, redis_cluster: LocalCluster) -> Callable[[], RedisAntenna]:
        def make() -> RedisAntenna:
            name = f"xrc-{uuid.uuid4().hex[:12]}"
            url = f"{redis_cluster.url}?client_name={name}"
            return RedisAntenna(url=url, client_name=name, **OPTIONS)

        return make

    @pytest.fixture
    def backend_fault(self, redis_cluster: LocalCluster) -> Iterator[BackendFault]:
        yield BackendFault(stop=redis_cluster.kill_all, start=redis_cluster.restart_all)
        if len(redis_cluster.running()) < len(redis_cluster.ports):
            redis_cluster.restart_all()  # a test that failed half-way: the next ones need it

    @pytest.fixture
    def antenna_resources(self, redis_cluster: LocalCluster) -> ResourceCounter:
        def count(antenna: Antenna) -> dict[str, int]:
            """The antenna's connections on every node, and their subscriptions."""
            name = _client_name(antenna)
            mine = [c for c in redis_cluster.client_list() if c.get("name") == name]
            return {
                "connections": len(mine),
                "subscriptions": sum(
                    int(c.get(kind, 0)) for c in mine for kind in ("sub", "psub", "ssub")
                ),
            }

        return count
