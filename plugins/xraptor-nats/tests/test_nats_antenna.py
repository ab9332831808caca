"""NatsAntenna beyond the contract: hostile names, liveness, one connection, faults."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats_support import NatsServer, free_port, nats_binary

from xraptor import AntennaUnavailable
from xraptor.antenna import Subscription
from xraptor.testing.conformance import eventually
from xraptor_nats.antenna import NatsAntenna
from xraptor_nats.subjects import MAX_ENCODED, channel_token

HOSTILE = [">", "*", "a.>", "a.*", "a.b", "a b", " ", "\t", "a\r\nPUB x 1\r\n", "x" * 10_000]


async def _next(sub: Subscription, wait: float = 5.0) -> str:
    return await asyncio.wait_for(sub.__anext__(), wait)


async def _silent(sub: Subscription, seconds: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(sub.__anext__(), seconds)
    except TimeoutError:
        return True
    return False


@pytest_asyncio.fixture
async def pair(nats_url: str) -> AsyncIterator[tuple[NatsAntenna, NatsAntenna]]:
    a, b = NatsAntenna(servers=nats_url), NatsAntenna(servers=nats_url)
    async with a, b:
        yield a, b


def test_tokens_are_single_literal_tokens() -> None:
    names = [*HOSTILE, "room", "room.1", "é ü 中", "x" * 150, "x" * 151, "\x00", "\ud800"]
    tokens = [channel_token(name) for name in names]
    assert len(set(tokens)) == len(names)
    for token in tokens:
        assert token and all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
        assert len(token) <= MAX_ENCODED + 1
    assert channel_token("x" * 150).startswith("b") and channel_token("x" * 151).startswith("h")


async def test_hostile_names_neither_leak_nor_break(
    pair: tuple[NatsAntenna, NatsAntenna],
) -> None:
    a, b = pair
    subs = {name: a.subscribe(name) for name in [*HOSTILE, "a", "x"]}
    for sub in subs.values():
        await sub.open()
    try:
        for name in HOSTILE:
            await b.post(name, f"for {name[:20]!r}")
        for name in HOSTILE:
            assert await _next(subs[name]) == f"for {name[:20]!r}"
        for sub in subs.values():
            assert await _silent(sub, 0.05)
        # a raw NATS client subscribed to everything sees only literal subjects
        raw = await nats.connect(a.servers)
        seen: list[str] = []

        async def record(msg: Msg) -> None:
            seen.append(msg.subject)

        try:
            await raw.subscribe(f"{a.subject_prefix}.ch.>", cb=record)
            # twice: nats-py's flush PING can overtake the SUB (see NatsAntenna._sync)
            await raw.flush()
            await raw.flush()
            await b.post("a.>", "one")
            await b.post("room 1", "two")
            assert await _next(subs["a.>"]) == "one"
            assert await eventually(lambda: _truthy(len(seen) >= 2))
            assert all(" " not in s and "*" not in s and ">" not in s.split(".") for s in seen)
        finally:
            await raw.close()
        assert a.state == "up" and b.state == "up"
    finally:
        for sub in subs.values():
            await sub.aclose()


async def _truthy(value: bool) -> bool:
    return value


async def test_is_alive_across_processes(pair: tuple[NatsAntenna, NatsAntenna]) -> None:
    a, b = pair
    for name in ["room", ">", "x" * 10_000]:
        assert await b.is_alive(name) is False
        async with a.subscribe(name):
            assert await a.is_alive(name) is True
            assert await b.is_alive(name) is True
            assert await b.is_alive(name + "!") is False
        assert await b.is_alive(name) is False


async def test_is_alive_answer_is_quick(pair: tuple[NatsAntenna, NatsAntenna]) -> None:
    _a, b = pair
    started = time.monotonic()
    for _ in range(20):
        assert await b.is_alive("nobody-here") is False
    # "no responders" comes at once (a timeout would answer True after 0.5 s each)
    assert time.monotonic() - started < 5.0


async def test_one_connection_per_process(nats_url: str) -> None:
    async with NatsAntenna(servers=nats_url) as antenna:
        nc = antenna._nc
        subs = [antenna.subscribe(f"c{i}") for i in range(50)]
        for sub in subs:
            await sub.open()
        for i in range(50):
            await antenna.post(f"c{i}", "m")
        await antenna.is_alive("other")
        assert antenna._nc is nc
        for sub in subs:
            assert await _next(sub) == "m"
            await sub.aclose()
    assert nc is not None and nc.is_closed


async def test_too_large_message_is_refused(pair: tuple[NatsAntenna, NatsAntenna]) -> None:
    a, _ = pair
    with pytest.raises(ValueError, match="max_payload"):
        await a.post("big", "x" * 2_000_000)
    async with a.subscribe("big") as sub:
        await a.post("big", "small")
        assert await _next(sub) == "small"


async def test_start_against_no_server_is_unavailable() -> None:
    antenna = NatsAntenna(servers="nats://127.0.0.1:1", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(AntennaUnavailable, match="cannot connect"):
        await antenna.start()
    assert time.monotonic() - started < 5


# ----- faults: kill -9 the server mid-subscription ------------------------------


async def test_subscription_resumes_after_kill_and_restart(private_nats: NatsServer) -> None:
    a = NatsAntenna(servers=private_nats.url, reconnect_time_wait=0.2)
    b = NatsAntenna(servers=private_nats.url, reconnect_time_wait=0.2)
    async with a, b, a.subscribe("room") as sub:
        await b.post("room", "before")
        assert await _next(sub) == "before"
        assert sub.gaps == 0

        private_nats.kill()
        assert await eventually(lambda: _truthy(a.state == "down"), timeout=5)
        assert await eventually(lambda: _truthy(b.state == "down"), timeout=5)
        assert a.describe()["state"] == "down"

        private_nats.restart()
        assert await eventually(lambda: _truthy(a.state == "up" and b.state == "up"), 10)
        assert sub.gaps == 1
        assert a.reconnects == 1
        # nats-py resubscribed by itself: the same subscription gets new messages
        await b.post("room", "after")
        assert await _next(sub) == "after"
        assert await b.is_alive("room") is True
        assert a.watched_channels() == ["room"]


async def test_publish_during_outage_fails_fast(private_nats: NatsServer) -> None:
    antenna = NatsAntenna(servers=private_nats.url, publish_timeout=1.0)
    async with antenna:
        await antenna.post("ch", "fine")
        private_nats.kill()
        assert await eventually(lambda: _truthy(antenna.state == "down"), timeout=5)
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(AntennaUnavailable):
                await antenna.post("ch", "lost?")
        with pytest.raises(AntennaUnavailable):
            await antenna.is_alive("ch")
        with pytest.raises(AntennaUnavailable):
            await antenna.subscribe("new").open()
        assert time.monotonic() - started < 1.0
        assert antenna.watched_channels() == []

        private_nats.restart()
        assert await eventually(lambda: _truthy(antenna.state == "up"), timeout=10)
        async with antenna.subscribe("ch") as sub:
            await antenna.post("ch", "back")
            assert await _next(sub) == "back"


async def test_publish_right_after_kill_is_bounded(private_nats: NatsServer) -> None:
    """Whether or not the client noticed the drop yet, a publish never hangs."""
    antenna = NatsAntenna(servers=private_nats.url, publish_timeout=0.5)
    async with antenna:
        private_nats.kill()
        started = time.monotonic()
        for _ in range(20):
            with contextlib.suppress(AntennaUnavailable):
                await antenna.post("ch", "x")
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 2.0


async def test_close_during_outage_releases_everything(private_nats: NatsServer) -> None:
    antenna = NatsAntenna(servers=private_nats.url)
    await antenna.start()
    sub = antenna.subscribe("ch")
    await sub.open()
    nc = antenna._nc
    private_nats.kill()
    assert await eventually(lambda: _truthy(antenna.state == "down"), timeout=5)
    started = time.monotonic()
    await antenna.close()
    assert time.monotonic() - started < 3
    assert antenna.state == "closed" and nc is not None and nc.is_closed
    with pytest.raises(StopAsyncIteration):
        await _next(sub)


async def test_publish_to_a_hung_server_is_bounded(private_nats: NatsServer) -> None:
    """A server that stops reading (SIGSTOP): once nats-py's buffer is full, publishes
    fail with AntennaUnavailable within publish_timeout instead of waiting forever."""
    antenna = NatsAntenna(servers=private_nats.url, publish_timeout=0.5)
    async with antenna:
        private_nats.pause()
        try:
            chunk = "x" * 900_000
            slowest = 0.0
            with pytest.raises(AntennaUnavailable):
                for _ in range(200):
                    started = time.monotonic()
                    try:
                        await antenna.post("ch", chunk)
                    finally:
                        slowest = max(slowest, time.monotonic() - started)
            assert slowest < 1.5
        finally:
            private_nats.resume()
        async with antenna.subscribe("ch2") as sub:
            await antenna.post("ch2", "after")
            assert await _next(sub, 10) == "after"


async def test_failed_start_and_close_leave_no_tasks(nats_url: str) -> None:
    before = set(asyncio.all_tasks())
    antenna = NatsAntenna(servers="nats://127.0.0.1:1", connect_timeout=0.3)
    with pytest.raises(AntennaUnavailable):
        await antenna.start()
    async with NatsAntenna(servers=nats_url) as other, other.subscribe("x"):
        await other.post("x", "y")
    await asyncio.sleep(0.05)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []


async def test_failover_between_clustered_servers() -> None:
    """With two servers in a cluster, losing one moves the antenna to the other."""
    binary = nats_binary()
    if binary is None:
        pytest.skip("needs the nats-server binary")
    ports = [free_port() for _ in range(4)]
    routes = f"nats://127.0.0.1:{ports[2]},nats://127.0.0.1:{ports[3]}"
    one = NatsServer(
        f"nats://127.0.0.1:{ports[0]}",
        binary,
        ("--cluster_name", "x", "--cluster", f"nats://127.0.0.1:{ports[2]}", "--routes", routes),
    )
    two = NatsServer(
        f"nats://127.0.0.1:{ports[1]}",
        binary,
        ("--cluster_name", "x", "--cluster", f"nats://127.0.0.1:{ports[3]}", "--routes", routes),
    )
    one.start()
    two.start()
    try:
        a = NatsAntenna(
            servers=[one.url, two.url],
            reconnect_time_wait=0.2,
            connect_options={"dont_randomize": True},  # start on server one
        )
        b = NatsAntenna(servers=two.url)
        async with b:
            await a.start()
            try:
                assert a._nc is not None and a._nc.connected_url is not None
                assert a._nc.connected_url.port == ports[0]
                async with a.subscribe("ha") as sub:
                    assert await eventually(lambda: b.is_alive("ha"), timeout=5)
                    one.kill()
                    assert await eventually(lambda: _truthy(a.reconnects == 1), timeout=10)
                    assert sub.gaps == 1 and a.state == "up"
                    assert a._nc.connected_url is not None
                    assert a._nc.connected_url.port == ports[1]
                    assert await eventually(lambda: b.is_alive("ha"), timeout=5)
                    await b.post("ha", "via two")
                    assert await _next(sub) == "via two"
            finally:
                await a.close()
    finally:
        one.stop()
        two.stop()


async def test_cancelled_subscribe_leaves_nothing_subscribed(nats_url: str) -> None:
    async with NatsAntenna(servers=nats_url) as a, NatsAntenna(servers=nats_url) as b:
        nc = a._nc
        assert nc is not None
        subs_before = len(nc._subs)
        task = asyncio.ensure_future(a.subscribe("cancelled").open())
        await asyncio.sleep(0)  # inside watch(), waiting for the server's PONG
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert a.watched_channels() == [] and len(nc._subs) == subs_before
        assert await eventually(_negate(lambda: b.is_alive("cancelled")))
        async with a.subscribe("cancelled") as sub:
            await b.post("cancelled", "once")
            assert await _next(sub) == "once"
            assert await _silent(sub, 0.1)  # a leaked subscription would deliver twice


def _negate(condition: Any) -> Any:
    async def negated() -> bool:
        return not await condition()

    return negated


async def test_slow_consumer_drop_is_reported_as_a_gap(nats_url: str) -> None:
    async with (
        NatsAntenna(servers=nats_url) as a,
        a.subscribe("slow") as sub,
        a.subscribe("fine") as other,
    ):
        messages = a._subs["slow"]
        error = nats.errors.SlowConsumerError(
            subject=messages.subject, reply="", sid=messages._id, sub=messages
        )
        await a._on_error(error)
        assert sub.gaps == 1 and other.gaps == 0
