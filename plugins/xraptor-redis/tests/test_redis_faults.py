"""Scale and fault behaviour against a private redis-server that the tests kill and restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis_support import RedisServer

from xraptor import AntennaUnavailable
from xraptor.testing import eventually
from xraptor_redis.antenna import RedisAntenna

FAST = {"publish_timeout": 0.5, "subscribe_timeout": 2.0, "reconnect_max_delay": 0.2}


@pytest_asyncio.fixture
async def antenna(redis_server: RedisServer) -> AsyncIterator[RedisAntenna]:
    antenna = RedisAntenna(url=redis_server.url, **FAST)
    await antenna.start()
    try:
        yield antenna
    finally:
        await antenna.close()


async def _clients(server: RedisServer) -> list[dict[str, str]]:
    """CLIENT LIST of the server, without the connection asking."""
    async with Redis.from_url(server.url, decode_responses=True, protocol=2) as admin:
        listing = await admin.client_list()
        me = await admin.client_id()
    return [client for client in listing if int(client["id"]) != me]


async def _next(sub: object, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(sub.__anext__(), timeout)  # type: ignore[attr-defined]


async def _state(antenna: RedisAntenna, state: str, timeout: float = 10.0) -> bool:
    async def reached() -> bool:
        return antenna.state == state

    return await eventually(reached, timeout)


async def test_connections_stay_flat_with_hundreds_of_channels(
    antenna: RedisAntenna, redis_server: RedisServer
) -> None:
    await antenna.post("warm-up", "x")
    before = await _clients(redis_server)
    assert len(before) <= 1 + antenna.pool_size
    names = [f"flat-{i}" for i in range(400)]
    subs = [antenna.subscribe(name) for name in names]
    await asyncio.gather(*(sub.open() for sub in subs))
    for name in names:
        await antenna.post(name, name)
    for name, sub in zip(names, subs, strict=True):
        assert await _next(sub) == name
    during = await _clients(redis_server)
    subscribers = [c for c in during if int(c.get("sub", "0")) > 0]
    assert len(subscribers) == 1 and int(subscribers[0]["sub"]) == 400
    assert len(during) <= 1 + antenna.pool_size
    for sub in subs:
        await sub.aclose()
    after = await _clients(redis_server)
    assert sum(int(c.get("sub", "0")) for c in after) == 0
    assert len(after) <= 1 + antenna.pool_size


async def test_client_kill_resumes_and_reports_gap(
    antenna: RedisAntenna, redis_server: RedisServer
) -> None:
    async with antenna.subscribe("killed") as sub:
        await antenna.post("killed", "before")
        assert await _next(sub) == "before"
        async with Redis.from_url(redis_server.url, protocol=2) as admin:
            killed = await admin.execute_command(  # type: ignore[no-untyped-call]
                "CLIENT", "KILL", "TYPE", "pubsub"
            )
        assert int(killed) == 1

        async def gap_seen() -> bool:
            return sub.gaps == 1

        assert await eventually(gap_seen, 10)
        assert antenna.state == "up"
        assert antenna.reconnects == 1
        await antenna.post("killed", "after")
        assert await _next(sub) == "after"
        assert await antenna.is_alive("killed")


async def test_restart_mid_subscription_resumes_and_reports_gap(
    antenna: RedisAntenna, redis_server: RedisServer
) -> None:
    async with antenna.subscribe("restarted") as sub, antenna.subscribe("other") as other:
        redis_server.kill()
        assert await _state(antenna, "down")
        assert sub.gaps == 0
        redis_server.start()
        assert await _state(antenna, "up")
        assert sub.gaps == 1 and other.gaps == 1
        assert sorted(antenna.watched_channels()) == ["other", "restarted"]
        await antenna.post("restarted", "after restart")
        assert await _next(sub) == "after restart"
        await antenna.post("other", "too")
        assert await _next(other) == "too"


async def test_publish_while_down_raises_unavailable_in_time(
    antenna: RedisAntenna, redis_server: RedisServer
) -> None:
    redis_server.kill()
    started = time.monotonic()
    with pytest.raises(AntennaUnavailable):
        await antenna.post("nowhere", "lost")
    assert time.monotonic() - started < antenna.publish_timeout + 0.3
    with pytest.raises(AntennaUnavailable):
        await antenna.is_alive("nowhere")
    redis_server.start()
    await antenna.post("nowhere", "fine again")


async def test_publish_to_a_hung_server_times_out(
    antenna: RedisAntenna, redis_server: RedisServer
) -> None:
    assert redis_server.process is not None
    pid = redis_server.process.pid
    await antenna.post("frozen", "ok")
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(antenna.post("frozen", str(i)) for i in range(10)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, AntennaUnavailable) for r in results), results
        assert elapsed < antenna.publish_timeout + 0.5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await _state(antenna, "up")
    await antenna.post("frozen", "thawed")


async def test_state_goes_down_then_up(antenna: RedisAntenna, redis_server: RedisServer) -> None:
    seen: list[str] = []
    original = antenna.set_state

    def record(state: str) -> None:
        seen.append(state)
        original(state)  # type: ignore[arg-type]

    antenna.set_state = record  # type: ignore[method-assign]
    assert antenna.describe()["state"] == "up"
    assert antenna.describe()["state"] == "up"
    async with antenna.subscribe("state"):
        redis_server.kill()
        assert await _state(antenna, "down")
        await asyncio.sleep(0.5)  # several failed reconnects: still down, never given up
        assert antenna.describe()["state"] == "down"
        redis_server.start()
        assert await _state(antenna, "up")
    assert seen == ["down", "up"]


async def test_watch_during_outage_completes_when_redis_returns(
    antenna: RedisAntenna, redis_server: RedisServer
) -> None:
    redis_server.kill()
    assert await _state(antenna, "down")
    sub = antenna.subscribe("late")
    opening = asyncio.ensure_future(sub.open())
    await asyncio.sleep(0.2)
    assert not opening.done()
    redis_server.start()
    await asyncio.wait_for(opening, 5)
    await antenna.post("late", "hello")
    assert await _next(sub) == "hello"
    await sub.aclose()


async def test_watch_times_out_when_redis_stays_away(redis_server: RedisServer) -> None:
    antenna = RedisAntenna(url=redis_server.url, **{**FAST, "subscribe_timeout": 0.5})
    await antenna.start()
    try:
        redis_server.kill()
        assert await _state(antenna, "down")
        started = time.monotonic()
        with pytest.raises(AntennaUnavailable):
            await antenna.subscribe("never").open()
        assert time.monotonic() - started < 1.5
        assert antenna.watched_channels() == []
        assert not antenna.is_listening("never")
    finally:
        await antenna.close()


async def test_no_task_or_connection_leak_across_outages(
    redis_server: RedisServer,
) -> None:
    tasks_before = len(asyncio.all_tasks())
    antenna = RedisAntenna(url=redis_server.url, **FAST)
    await antenna.start()
    subs = [antenna.subscribe(f"leak-{i}") for i in range(20)]
    for sub in subs:
        await sub.open()
    tasks_up = len(asyncio.all_tasks())
    # the reader, the publisher, the silence watchdog, the base class's health probe
    assert tasks_up == tasks_before + 4
    for round_ in range(4):
        if round_ % 2:
            redis_server.restart()
        else:
            async with Redis.from_url(redis_server.url, protocol=2) as admin:
                await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]

        async def recovered(expected: int = round_ + 1) -> bool:
            return antenna.reconnects == expected and antenna.state == "up"

        assert await eventually(recovered, 10)
        await antenna.post("leak-0", f"round {round_}")
        assert await _next(subs[0]) == f"round {round_}"
        assert len(asyncio.all_tasks()) == tasks_up
        clients = await _clients(redis_server)
        assert len(clients) <= 1 + antenna.pool_size
        assert [int(c["sub"]) for c in clients if int(c.get("sub", "0"))] == [20]
    assert all(sub.gaps == 4 for sub in subs)
    await antenna.close()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks_before
    assert await _clients(redis_server) == []


async def test_close_while_down_is_prompt(redis_server: RedisServer) -> None:
    antenna = RedisAntenna(url=redis_server.url, **FAST)
    await antenna.start()
    sub = antenna.subscribe("closing-down")
    await sub.open()
    redis_server.kill()
    assert await _state(antenna, "down")
    started = time.monotonic()
    await antenna.close()
    assert time.monotonic() - started < 0.5
    assert antenna.state == "closed"
    with pytest.raises(StopAsyncIteration):
        await _next(sub)


async def test_frozen_server_is_detected_by_the_health_check(redis_server: RedisServer) -> None:
    antenna = RedisAntenna(url=redis_server.url, **FAST, health_check_interval=0.3)
    await antenna.start()
    try:
        async with antenna.subscribe("frozen-sub") as sub:
            assert redis_server.process is not None
            pid = redis_server.process.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                assert await _state(antenna, "down", 5)
                assert time.monotonic() - started < 2.0
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await _state(antenna, "up")
            assert sub.gaps == 1
            await antenna.post("frozen-sub", "thawed")
            assert await _next(sub) == "thawed"
        # an idle but healthy connection is not dropped
        reconnects = antenna.reconnects
        await asyncio.sleep(1.0)
        assert antenna.reconnects == reconnects and antenna.state == "up"
    finally:
        await antenna.close()
