"""The redis-rate-limit middleware against a real Redis, shared by two instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import orjson
import pytest
import pytest_asyncio
from redis_support import RedisServer

from xraptor.plugins import Plugins
from xraptor.protocol import MethodType, Request, Response
from xraptor_redis.ratelimit import RedisRateLimit


def _request(rid: str = "r1", header: dict[str, str] | None = None) -> Request:
    return Request(
        request_id=rid, payload="", header=header or {}, route="chat/send", method=MethodType.POST
    )


def _conn(ip: str = "10.0.0.1") -> SimpleNamespace:
    return SimpleNamespace(remote_ip=ip)


@pytest_asyncio.fixture
async def limiters(redis_url: str) -> AsyncIterator[tuple[RedisRateLimit, RedisRateLimit]]:
    """Two limiters with one configuration: two server processes, as far as Redis goes."""
    factory = Plugins().middlewares.get("redis-rate-limit")
    scope = f"test-{time.monotonic_ns()}"
    first = factory(url=redis_url, limit=5, window=3, scope=scope)
    second = factory(url=redis_url, limit=5, window=3, scope=scope)
    assert isinstance(first, RedisRateLimit) and isinstance(second, RedisRateLimit)
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


async def test_limit_is_shared_across_processes(
    limiters: tuple[RedisRateLimit, RedisRateLimit],
) -> None:
    first, second = limiters
    results = []
    for i in range(5):
        limiter = first if i % 2 else second
        results.append(await limiter(_request(f"r{i}"), _conn()))
    assert results == [None] * 5
    refused = await first(_request("r6"), _conn())
    assert isinstance(refused, Response)
    assert refused.request_id == "r6"
    assert refused.method is MethodType.POST
    assert refused.header["error"] == "rate_limited"
    retry_after = int(refused.header["retry_after"])
    assert 1 <= retry_after <= 3
    body = orjson.loads(refused.payload)
    assert body["code"] == "rate_limited" and body["retry_after"] == retry_after
    assert f"retry after {retry_after} s" in body["message"]
    assert isinstance(await second(_request("r7"), _conn()), Response)
    # another client has its own budget
    assert await second(_request("r8"), _conn("10.0.0.2")) is None


async def test_concurrent_requests_never_exceed_the_limit(
    limiters: tuple[RedisRateLimit, RedisRateLimit],
) -> None:
    first, second = limiters
    results = await asyncio.gather(
        *((first if i % 2 else second)(_request(f"c{i}"), _conn("10.9.9.9")) for i in range(40))
    )
    assert sum(result is None for result in results) == 5


async def test_window_expires(redis_url: str) -> None:
    limiter = RedisRateLimit(url=redis_url, limit=2, window=0.3, scope=f"w-{time.monotonic_ns()}")
    try:
        assert await limiter(_request(), _conn()) is None
        assert await limiter(_request(), _conn()) is None
        refused = await limiter(_request(), _conn())
        assert isinstance(refused, Response) and refused.header["retry_after"] == "1"
        await asyncio.sleep(0.4)
        assert await limiter(_request(), _conn()) is None
    finally:
        await limiter.aclose()


async def test_header_key(redis_url: str) -> None:
    limiter = RedisRateLimit(
        url=redis_url, limit=1, window=5, key="header:user", scope=f"h-{time.monotonic_ns()}"
    )
    try:
        assert await limiter(_request(header={"user": "ann"}), _conn("1.1.1.1")) is None
        # same user from another address: same budget
        assert isinstance(
            await limiter(_request(header={"user": "ann"}), _conn("2.2.2.2")), Response
        )
        assert await limiter(_request(header={"user": "bob"}), _conn("1.1.1.1")) is None
        # no header: counted by address
        assert await limiter(_request(), _conn("3.3.3.3")) is None
        assert isinstance(await limiter(_request(), _conn("3.3.3.3")), Response)
        long_value = "x" * 10_000
        assert await limiter(_request(header={"user": long_value}), _conn()) is None
    finally:
        await limiter.aclose()


@pytest.mark.parametrize(
    "options",
    [
        {"limit": 0, "window": 1},
        {"limit": 1.5, "window": 1},
        {"limit": 1, "window": 0},
        {"limit": 1, "window": 1, "key": "cookie"},
        {"limit": 1, "window": 1, "key": "header:"},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="redis-rate-limit"):
        RedisRateLimit(**options)  # type: ignore[arg-type]


async def test_redis_down_fails_open_or_closed(redis_server: RedisServer) -> None:
    open_ = RedisRateLimit(url=redis_server.url, limit=1, window=5, timeout=0.3)
    closed = RedisRateLimit(url=redis_server.url, limit=1, window=5, timeout=0.3, fail_open=False)
    try:
        redis_server.kill()
        started = time.monotonic()
        assert await open_(_request(), _conn()) is None
        refused = await closed(_request(), _conn())
        assert isinstance(refused, Response)
        assert refused.header["error"] == "rate_limit_unavailable"
        assert time.monotonic() - started < 1.5
    finally:
        await open_.aclose()
        await closed.aclose()
