"""Room history on Redis: the history conformance suite, and what is Redis's own
(keys, trimming, epochs, the positioned pub/sub payload)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.crc import key_slot

from xraptor.history import HistoryEntry, HistoryPolicy, Position
from xraptor.testing import HistoryConformance
from xraptor_redis.antenna import RedisAntenna
from xraptor_redis.history import (
    DEFAULT_PREFIX,
    EMPTY_EPOCH_MS,
    SEQ_LIMIT,
    RedisHistory,
    offset_of,
    stream_id_of,
)


class TestRedisHistory(HistoryConformance):
    @pytest.fixture
    def antenna_factory(self, redis_url: str) -> Callable[[], RedisAntenna]:
        return lambda: RedisAntenna(url=redis_url)


@pytest_asyncio.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url, decode_responses=True, protocol=2) as client:
        yield client


@pytest.fixture
def room() -> str:
    return f"xraptor-redis-history-{uuid.uuid4().hex[:12]}"


ROOMY = HistoryPolicy(size=100)


async def test_keys_carry_the_prefix_and_a_hash_tag_of_the_room(
    redis_url: str, admin: Redis, room: str
) -> None:
    braced = f"{{{room}}}:a {{b}}"  # a room id with braces of its own
    async with RedisAntenna(url=redis_url, history_prefix="myapp:h") as antenna:
        await antenna.publish_with_history(braced, "hello", ROOMY)
    tag = hashlib.blake2b(braced.encode(), digest_size=8).hexdigest()
    stream, meta = f"myapp:h:{{{tag}}}:s:{braced}", f"myapp:h:{{{tag}}}:e:{braced}"
    assert await admin.xlen(stream) == 1
    assert (await admin.hgetall(meta)).keys() == {"e", "t", "f"}  # f: the epoch's first id
    # Redis Cluster hashes the first {...}: both keys of a room share a slot, the tag's
    assert key_slot(stream.encode()) == key_slot(meta.encode()) == key_slot(tag.encode())
    async with RedisAntenna(url=redis_url) as antenna:
        await antenna.publish_with_history(room, "default prefix", ROOMY)
    assert [key async for key in admin.scan_iter(f"xraptor:history:*:{room}")]


@pytest.mark.parametrize("prefix", ["", "a{b}", "x}", 7])
def test_a_bad_prefix_is_refused(prefix: object) -> None:
    with pytest.raises(ValueError, match="history_prefix"):
        RedisAntenna(history_prefix=prefix)


async def test_keys_expire_with_the_ttl_and_persist_without(
    redis_url: str, admin: Redis, room: str
) -> None:
    async with RedisAntenna(url=redis_url) as antenna:
        await antenna.publish_with_history(room, "m", HistoryPolicy(size=10, ttl=30))
        stream, meta = RedisHistory(DEFAULT_PREFIX).keys(room)
        for key in (stream, meta):
            assert 0 < await admin.pttl(key) <= 30_000
        await antenna.publish_with_history(room, "m", HistoryPolicy(size=10))
        for key in (stream, meta):
            assert await admin.pttl(key) == -1


async def test_a_history_redis_lost_starts_a_new_epoch(
    redis_url: str, admin: Redis, room: str
) -> None:
    async with RedisAntenna(url=redis_url) as antenna:
        first = await antenna.publish_with_history(room, "a", ROOMY)
        stream, meta = RedisHistory(DEFAULT_PREFIX).keys(room)
        await admin.delete(stream)  # evicted, say: the epoch key alone is not enough
        assert await antenna.read_history(room, first) is None
        second = await antenna.publish_with_history(room, "b", ROOMY)
        assert second.epoch != first.epoch
        await admin.delete(meta)  # and the other way round
        third = await antenna.publish_with_history(room, "c", ROOMY)
        assert third.epoch not in (first.epoch, second.epoch)
        assert await antenna.read_history(room, second) is None
        assert await antenna.read_history(room, third) == []


async def test_offsets_stay_one_to_one_when_the_clock_stands_still(
    redis_url: str, admin: Redis, room: str
) -> None:
    """Redis gives ids ``<last ms>-<seq + 1>`` while its clock is behind the last entry's:
    the script never lets ``seq`` reach the limit of the offset mapping."""
    async with RedisAntenna(url=redis_url) as antenna:
        first = await antenna.publish_with_history(room, "a", ROOMY)
        stream, _ = RedisHistory(DEFAULT_PREFIX).keys(room)
        future_ms = int(time.time() * 1000) + 3_600_000
        await admin.xadd(stream, {"m": "from the future"}, id=f"{future_ms}-{SEQ_LIMIT - 2}")
        positions = [await antenna.publish_with_history(room, f"b{i}", ROOMY) for i in range(3)]
        assert [stream_id_of(p.offset) for p in positions] == [
            f"{future_ms}-{SEQ_LIMIT - 1}",
            f"{future_ms + 1}-0",
            f"{future_ms + 1}-1",
        ]
        history = await antenna.read_history(room, first)
        assert history is not None
        assert [entry.message for entry in history] == ["from the future", "b0", "b1", "b2"]
        assert [entry.position for entry in history[1:]] == positions
        assert offset_of(f"{future_ms + 1}-0") > offset_of(f"{future_ms}-{SEQ_LIMIT - 1}")


async def test_a_flushed_script_cache_is_loaded_again(
    redis_url: str, admin: Redis, room: str
) -> None:
    async with RedisAntenna(url=redis_url) as antenna:
        first = await antenna.publish_with_history(room, "a", ROOMY)
        await admin.script_flush()
        results = await asyncio.gather(
            *(antenna.publish_with_history(room, f"b{i}", ROOMY) for i in range(5))
        )
        await admin.script_flush()
        history = await antenna.read_history(room, first)
    assert history is not None and [entry.position for entry in history] == list(results)
    assert [entry.message for entry in history] == [f"b{i}" for i in range(5)]


async def test_plain_and_malformed_payloads_on_a_channel(
    redis_url: str, admin: Redis, room: str
) -> None:
    """A plain message that is not ASCII is delivered as it was; a payload that starts
    with the byte 0xFF but holds no position is dropped (logged), and the next message
    goes through."""
    async with RedisAntenna(url=redis_url) as antenna, antenna.subscribe(room) as sub:
        await antenna.publish(room, "ÿ olá 🦖")
        assert await asyncio.wait_for(sub.__anext__(), 5) == "ÿ olá 🦖"
        await admin.publish(room, b"\xffno position here")
        await antenna.publish_with_history(room, "after", ROOMY)
        assert await asyncio.wait_for(sub.__anext__(), 5) == "after"


async def test_an_empty_history_keeps_the_epoch_it_was_given(
    redis_url: str, admin: Redis, room: str
) -> None:
    """newest_position of a room without history draws the epoch and keeps it a day
    (each call a day again); the first append takes it, with the room's ttl or none."""
    stream, meta = RedisHistory(DEFAULT_PREFIX).keys(room)
    async with RedisAntenna(url=redis_url) as antenna:
        start = await antenna.newest_position(room)
        assert start.offset == 0 and not await admin.exists(stream)
        assert await admin.hgetall(meta) == {"e": start.epoch}
        assert EMPTY_EPOCH_MS - 5_000 < await admin.pttl(meta) <= EMPTY_EPOCH_MS
        await admin.pexpire(meta, 60_000)
        assert await antenna.newest_position(room) == start
        assert await admin.pttl(meta) > 60_000, "a call keeps an empty epoch a day again"
        first = await antenna.publish_with_history(room, "a", HistoryPolicy(size=10, ttl=30))
        assert first.epoch == start.epoch
        assert (await admin.hgetall(meta))["f"] == stream_id_of(first.offset)
        for key in (stream, meta):
            assert 0 < await admin.pttl(key) <= 30_000
    other = f"{room}-forever"
    stream, meta = RedisHistory(DEFAULT_PREFIX).keys(other)
    async with RedisAntenna(url=redis_url) as antenna:
        start = await antenna.newest_position(other)
        assert (await antenna.publish_with_history(other, "a", ROOMY)).epoch == start.epoch
        for key in (stream, meta):
            assert await admin.pttl(key) == -1


async def test_a_lost_stream_gives_a_new_epoch_to_newest_position_too(
    redis_url: str, admin: Redis, room: str
) -> None:
    stream, meta = RedisHistory(DEFAULT_PREFIX).keys(room)
    async with RedisAntenna(url=redis_url) as antenna:
        start = await antenna.newest_position(room)
        first = await antenna.publish_with_history(room, "a", ROOMY)
        await admin.delete(stream)  # evicted: the messages of the epoch are gone
        again = await antenna.newest_position(room)
        assert again.offset == 0 and again.epoch != first.epoch
        assert await antenna.read_history(room, start) is None
        assert await antenna.read_history(room, again) == []
        second = await antenna.publish_with_history(room, "b", ROOMY)
        assert second.epoch == again.epoch
        await admin.delete(meta)  # the epoch key lost: the stream is of an unknown epoch
        third = await antenna.newest_position(room)
        assert third.epoch not in (first.epoch, second.epoch) and third.offset == 0
        assert not await admin.exists(stream)


async def test_the_start_of_an_epoch_without_its_first_id_is_not_recovered(
    redis_url: str, admin: Redis, room: str
) -> None:
    """A history written before the epoch's first id was recorded (no ``f``): where it
    starts is unknown, so a read after offset 0 is refused; other positions read."""
    _, meta = RedisHistory(DEFAULT_PREFIX).keys(room)
    async with RedisAntenna(url=redis_url) as antenna:
        first = await antenna.publish_with_history(room, "a", ROOMY)
        second = await antenna.publish_with_history(room, "b", ROOMY)
        await admin.hdel(meta, "f")
        assert await antenna.read_history(room, Position(first.epoch, 0)) is None
        assert await antenna.read_history(room, first) == [HistoryEntry(second, "b")]
        assert await antenna.newest_position(room) == second
