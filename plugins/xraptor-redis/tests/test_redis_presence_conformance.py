"""The presence capability's conformance suite against a real Redis, and its keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from xraptor.testing import PresenceConformance
from xraptor_redis.antenna import RedisAntenna
from xraptor_redis.presence import room_keys


@pytest_asyncio.fixture
async def presence_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    prefix = f"xrtest:presence:{uuid.uuid4().hex[:12]}:"
    yield prefix
    async with Redis.from_url(redis_url, decode_responses=True, protocol=2) as admin:
        keys = [key async for key in admin.scan_iter(match=f"{prefix}*")]
        if keys:
            await admin.delete(*keys)


class TestRedisPresence(PresenceConformance):
    @pytest.fixture
    def antenna_factory(self, redis_url: str, presence_prefix: str) -> Callable[[], RedisAntenna]:
        return lambda: RedisAntenna(url=redis_url, presence_prefix=presence_prefix)


async def test_a_rooms_keys_share_a_hash_tag_and_leave_with_the_last_member(
    redis_url: str, presence_prefix: str
) -> None:
    room = "chat:{odd} room é"
    zset, table = room_keys(presence_prefix, room)
    tag = zset[zset.index("{") : zset.index("}") + 1]
    assert tag in table and len(tag) == 34 and "odd" not in tag
    async with (
        RedisAntenna(url=redis_url, presence_prefix=presence_prefix, presence_ttl=5) as antenna,
        Redis.from_url(redis_url, decode_responses=True, protocol=2) as admin,
    ):
        await antenna.presence_set(room, {"c:1": '"one"'})
        assert await admin.zrange(zset, 0, -1) == ["c:1"]
        assert await admin.hgetall(table) == {"c:1": '"one"'}
        assert 0 < await admin.pttl(zset) <= 5000 and 0 < await admin.pttl(table) <= 5000
        await antenna.presence_remove(room, ["c:1"])
        assert await admin.exists(zset, table) == 0


def test_presence_options_are_checked() -> None:
    with pytest.raises(ValueError, match="presence_prefix"):
        RedisAntenna(presence_prefix="")
    with pytest.raises(ValueError, match="presence_ttl"):
        RedisAntenna(presence_ttl=0)
