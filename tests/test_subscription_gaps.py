"""Gap notices reach every kind of consumer: a Subscription (counted, and in place in
``events()``) and a plain Listener (``on_gap``, ``on_closed``)."""

from __future__ import annotations

import asyncio

import pytest

import xraptor
from xraptor import Gap, Listener, Subscription
from xraptor.antennas import MemoryAntenna


async def test_events_yield_gaps_where_they_fell_and_plain_iteration_skips_them() -> None:
    async with (
        MemoryAntenna() as antenna,
        antenna.subscribe("g") as events,
        antenna.subscribe("g") as plain,
    ):
        await antenna.post("g", "before")
        antenna.report_gap(["g"])
        await antenna.post("g", "after")
        stream = events.events()
        got = [await asyncio.wait_for(anext(stream), 1) for _ in range(3)]
        assert got == ["before", Gap("g"), "after"]
        assert events.gaps == 1
        assert [await anext(plain), await anext(plain)] == ["before", "after"]
        assert plain.gaps == 1


async def test_a_timed_out_wait_for_an_event_loses_nothing() -> None:
    async with MemoryAntenna() as antenna, antenna.subscribe("t") as sub:
        stream = sub.events()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.05)
        antenna.report_gap()
        await antenna.post("t", "still here")
        assert await asyncio.wait_for(anext(stream), 1) == Gap("t")
        assert await asyncio.wait_for(anext(stream), 1) == "still here"


async def test_events_end_when_the_antenna_closes() -> None:
    antenna = MemoryAntenna()
    await antenna.start()
    sub = antenna.subscribe("end")
    await sub.open()
    antenna.report_gap(["end"])
    await antenna.close()
    assert [event async for event in sub.events()] == [Gap("end")]
    assert sub.closed


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_message(self, channel: str, message: str) -> None:
        self.events.append((channel, message))

    def on_gap(self, channel: str) -> None:
        self.events.append(Gap(channel))

    def on_closed(self) -> None:
        self.events.append("closed")


async def test_a_listener_sees_messages_gaps_and_the_close() -> None:
    antenna = MemoryAntenna()
    recorder = Recorder()
    listener: Listener = recorder
    await antenna.listen("l", listener)
    await antenna.post("l", "one")
    antenna.report_gap(["l", "not-listened"])
    await antenna.post("l", "two")
    await antenna.close()
    assert recorder.events == [("l", "one"), Gap("l"), ("l", "two"), "closed"]


async def test_report_gap_defaults_to_every_watched_channel() -> None:
    async with MemoryAntenna() as antenna:
        first, second = Recorder(), Recorder()
        await antenna.listen("a", first)
        await antenna.listen("b", second)
        antenna.report_gap()
        assert first.events == [Gap("a")] and second.events == [Gap("b")]


def test_public_names() -> None:
    assert xraptor.Gap is Gap and xraptor.Listener is Listener
    assert isinstance(Gap("x"), Gap) and Gap("x") == Gap("x") and Gap("x") != Gap("y")
    assert Subscription.events.__doc__
