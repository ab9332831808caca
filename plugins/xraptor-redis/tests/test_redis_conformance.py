"""The antenna contract, unchanged, against a real Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from xraptor.testing import AntennaConformance
from xraptor_redis.antenna import RedisAntenna


class TestRedisConformance(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self, redis_url: str) -> Callable[[], RedisAntenna]:
        return lambda: RedisAntenna(url=redis_url)
