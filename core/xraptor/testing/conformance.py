"""The antenna conformance suite: every antenna, built-in or third-party, runs it unchanged.

Usage in a plugin's tests::

    from xraptor.testing import AntennaConformance

    class TestMyAntenna(AntennaConformance):
        @pytest.fixture
        def antenna_factory(self, my_backend_url):
            return lambda: MyAntenna(url=my_backend_url)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from ..antenna import Antenna, AntennaError, Subscription

AntennaFactory = Callable[[], Antenna]


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def _next(sub: Subscription, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(sub.__anext__(), timeout)


async def _nothing_within(sub: Subscription, seconds: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(sub.__anext__(), seconds)
    except TimeoutError:
        return True
    return False


class AntennaConformance:
    """The contract. Subclasses provide the ``antenna_factory`` fixture."""

    @pytest.fixture
    def antenna_factory(self) -> AntennaFactory:
        raise NotImplementedError("provide an antenna_factory fixture")

    @pytest_asyncio.fixture
    async def antenna(self, antenna_factory: AntennaFactory) -> AsyncIterator[Antenna]:
        async with antenna_factory() as antenna:
            yield antenna

    @pytest_asyncio.fixture
    async def other(self, antenna_factory: AntennaFactory) -> AsyncIterator[Antenna]:
        """A second antenna on the same backend: another process, as far as the contract goes."""
        async with antenna_factory() as antenna:
            yield antenna

    @pytest.mark.asyncio
    async def test_names_itself(self, antenna: Antenna) -> None:
        assert isinstance(type(antenna).name, str) and type(antenna).name
        assert antenna.state == "up"

    @pytest.mark.asyncio
    async def test_delivers_in_order(self, antenna: Antenna, other: Antenna) -> None:
        async with antenna.subscribe("order") as sub:
            for i in range(500):
                await other.post("order", f"m{i}")
            received = [await _next(sub) for _ in range(500)]
        assert received == [f"m{i}" for i in range(500)]

    @pytest.mark.asyncio
    async def test_several_subscribers_each_get_every_message(
        self, antenna: Antenna, other: Antenna
    ) -> None:
        async with (
            antenna.subscribe("many") as a1,
            antenna.subscribe("many") as a2,
            other.subscribe("many") as b1,
        ):
            for i in range(20):
                await antenna.post("many", str(i))
            for sub in (a1, a2, b1):
                assert [await _next(sub) for _ in range(20)] == [str(i) for i in range(20)]
                assert await _nothing_within(sub, 0.2)

    @pytest.mark.asyncio
    async def test_one_backend_subscription_per_channel(self, antenna: Antenna) -> None:
        async with antenna.subscribe("shared") as s1, antenna.subscribe("shared") as s2:
            assert antenna.watched_channels().count("shared") == 1
            await s1.aclose()
            assert antenna.watched_channels() == ["shared"]
            await antenna.post("shared", "still")
            assert await _next(s2) == "still"
        assert antenna.watched_channels() == []

    @pytest.mark.asyncio
    async def test_unsubscribe_stops_delivery_and_frees(
        self, antenna: Antenna, other: Antenna
    ) -> None:
        sub = antenna.subscribe("gone")
        await sub.open()
        await other.post("gone", "before")
        assert await _next(sub) == "before"
        await sub.aclose()
        assert antenna.watched_channels() == []
        assert not antenna.is_listening("gone")
        async with antenna.subscribe("probe") as probe:
            await other.post("gone", "after")
            await other.post("probe", "marker")
            assert await _next(probe) == "marker"
        with pytest.raises(StopAsyncIteration):
            await _next(sub)

    @pytest.mark.asyncio
    async def test_is_alive_before_during_after(self, antenna: Antenna, other: Antenna) -> None:
        assert await antenna.is_alive("alive") is False
        assert await other.is_alive("alive") is False
        async with antenna.subscribe("alive"):
            assert await antenna.is_alive("alive") is True
            assert await eventually(lambda: other.is_alive("alive"))
            assert await other.is_alive("alive-not") is False
        # this process unsubscribed and was told so: no waiting on its own view
        assert await antenna.is_alive("alive") is False
        assert await eventually(_negate(lambda: other.is_alive("alive")))

    @pytest.mark.asyncio
    async def test_is_alive_starts_a_new_antenna(self, antenna_factory: AntennaFactory) -> None:
        """``is_alive`` on an antenna not started yet starts it (as ``post`` does)."""
        antenna = antenna_factory()
        try:
            before = antenna.state
            assert await antenna.is_alive("never-subscribed") is False
            assert (before, antenna.state) == ("new", "up")
        finally:
            await antenna.close()

    @pytest.mark.asyncio
    async def test_many_channels_without_crosstalk(self, antenna: Antenna, other: Antenna) -> None:
        names = [f"ch-{i}" for i in range(200)]
        subs = [antenna.subscribe(name) for name in names]
        for sub in subs:
            await sub.open()
        try:
            for name in names:
                await other.post(name, name)
            for name, sub in zip(names, subs, strict=True):
                assert await _next(sub) == name
            assert await _nothing_within(subs[0], 0.2)
        finally:
            for sub in subs:
                await sub.aclose()
        assert antenna.watched_channels() == []

    @pytest.mark.asyncio
    async def test_look_alike_channel_names_stay_apart(
        self, antenna: Antenna, other: Antenna
    ) -> None:
        names = ["room", "room.1", "room.*", "room.>", "*", ">", "room 1", "room\r\n1", "é ü 中"]
        subs = {name: antenna.subscribe(name) for name in names}
        for sub in subs.values():
            await sub.open()
        try:
            for name in names:
                await other.post(name, f"for {name}")
            for name, sub in subs.items():
                assert await _next(sub) == f"for {name}"
                assert await _nothing_within(sub, 0.1)
        finally:
            for sub in subs.values():
                await sub.aclose()

    @pytest.mark.asyncio
    async def test_large_and_non_ascii_messages(self, antenna: Antenna, other: Antenna) -> None:
        large = "x" * 512_000
        text = 'olá 🦖 — 中文 \u0000 "quoted" \\ end'
        async with antenna.subscribe("big") as sub:
            await other.post("big", large)
            await other.post("big", text)
            assert await _next(sub, 10) == large
            assert await _next(sub) == text

    @pytest.mark.asyncio
    async def test_bad_arguments_are_refused(self, antenna: Antenna) -> None:
        with pytest.raises(TypeError):
            await antenna.post(1, "x")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await antenna.post("ch", b"x")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await antenna.post("", "x")
        with pytest.raises(ValueError):
            await antenna.subscribe("").open()
        async with antenna.subscribe("after-bad") as sub:
            await antenna.post("after-bad", "fine")
            assert await _next(sub) == "fine"

    @pytest.mark.asyncio
    async def test_concurrent_subscribe_and_unsubscribe(
        self, antenna: Antenna, other: Antenna
    ) -> None:
        channels = [f"churn-{i}" for i in range(3)]
        live: list[Subscription] = []
        rng = random.Random(5)

        async def churn() -> None:
            for _ in range(25):
                if live and rng.random() < 0.5:
                    await live.pop(rng.randrange(len(live))).aclose()
                else:
                    sub = antenna.subscribe(rng.choice(channels))
                    live.append(sub)
                    await sub.open()

        await asyncio.gather(*(churn() for _ in range(4)))
        wanted = {sub.channel for sub in live}
        assert set(antenna.watched_channels()) == wanted
        for channel in channels:
            await other.post(channel, f"to {channel}")
        for sub in live:
            assert await _next(sub) == f"to {sub.channel}"
        for sub in live:
            assert await _nothing_within(sub, 0.05)
        for sub in live:
            await sub.aclose()
        assert antenna.watched_channels() == []
        for channel in channels:
            assert await antenna.is_alive(channel) is False

    @pytest.mark.asyncio
    async def test_close_releases_everything(
        self, antenna_factory: AntennaFactory, other: Antenna
    ) -> None:
        antenna = antenna_factory()
        await antenna.start()
        sub = antenna.subscribe("closing")
        await sub.open()
        assert await eventually(lambda: other.is_alive("closing"))
        await antenna.close()
        assert antenna.state == "closed"
        assert antenna.watched_channels() == []
        assert await eventually(_negate(lambda: other.is_alive("closing")))
        with pytest.raises(AntennaError):
            await antenna.start()
        await antenna.close()

    @pytest.mark.asyncio
    async def test_optional_round_trip_check(self, antenna_factory: AntennaFactory) -> None:
        """An antenna that implements ``ping`` answers it and is probed while started, and
        ``close()`` ends the probe; one that does not is never probed."""
        antenna = antenna_factory()
        await antenna.start()
        try:
            if not antenna.can_ping:
                assert "round_trip_ms" not in antenna.describe()
                return
            await asyncio.wait_for(antenna.ping(), antenna.health_timeout)

            async def probed() -> bool:
                return antenna.describe()["round_trip_ms"] is not None

            assert await eventually(probed, antenna.health_interval + antenna.health_timeout)
            assert antenna.state == "up" and antenna.describe()["probe_failure"] is None
        finally:
            await antenna.close()
        probes = [task for task in asyncio.all_tasks() if "health probe" in task.get_name()]
        assert probes == []


def _negate(condition: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    async def negated() -> bool:
        return not await condition()

    return negated
