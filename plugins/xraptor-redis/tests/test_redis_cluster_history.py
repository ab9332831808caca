"""Room history and presence on a local Redis Cluster (3 masters, 3 replicas): the
capabilities' conformance suites, unchanged; where a room's keys live; a slot migration
done by hand (``ASK`` redirects); a killed master with rooms that keep history."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cluster_support import LocalCluster

from xraptor.testing import HistoryConformance, PresenceConformance
from xraptor_redis.antenna import RedisAntenna

OPTIONS = {"reconnect_max_delay": 0.5}


class TestRedisClusterHistory(HistoryConformance):
    @pytest.fixture
    def antenna_factory(self, redis_cluster: LocalCluster) -> Callable[[], RedisAntenna]:
        return lambda: RedisAntenna(url=redis_cluster.url, **OPTIONS)


class TestRedisClusterPresence(PresenceConformance):
    @pytest.fixture
    def antenna_factory(self, redis_cluster: LocalCluster) -> Callable[[], RedisAntenna]:
        return lambda: RedisAntenna(url=redis_cluster.url, **OPTIONS)
