"""Rooms with history catch up after a backend outage instead of a gap notice (issue 12),
with a real server and real clients, on a memory antenna whose "backend" can be cut.

The cut antenna stands for a process whose subscriber connection was down: messages
published meanwhile reach the history (another process published them) but not this
process's listeners; the driver then resubscribes and reports the gap. The Redis
plugin's tests do the same with a real redis-server killed and restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from test_history import chat, quiet, say, serving, take

from xraptor import Client, Response, XRaptor
from xraptor.antenna import Antenna, AntennaUnavailable
from xraptor.antennas import MemoryAntenna
from xraptor.history import HistoryEntry, Position


class CutMemoryAntenna(MemoryAntenna):
    """The memory antenna with a subscriber side that can be cut (messages published
    meanwhile are not delivered here) and a history read that takes a while."""

    name: ClassVar[str] = "cut-memory"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.cut = False
        self.read_delay = 0.0
        self.read_fails = False

    def deliver(self, channel: str, message: str) -> None:
        if not self.cut:
            super().deliver(channel, message)

    def deliver_at(self, channel: str, message: str, position: Position) -> None:
        if not self.cut:
            super().deliver_at(channel, message, position)

    async def read_history(self, channel: str, after: Position) -> list[HistoryEntry] | None:
        await asyncio.sleep(self.read_delay)
        if self.read_fails:
            raise AntennaUnavailable("the backend went away again")
        entries = await super().read_history(channel, after)
        await asyncio.sleep(self.read_delay)
        return entries

    def restore(self) -> None:
        """Resubscribed: deliver again, and report the gap as a driver does."""
        self.cut = False
        self.report_gap()


def notices(pushes: list[Response]) -> list[str]:
    return [push.header["notice"] for push in pushes if "notice" in push.header]


def history_chat(antenna: object = "memory") -> XRaptor:
    """The chat app, its ``chat:`` rooms keeping 1,000 messages of history."""
    return chat(("chat:", {"history_size": 1000}), antenna=antenna)


@contextlib.asynccontextmanager
async def member_and_poster(
    app: XRaptor, publisher: XRaptor | None = None
) -> AsyncIterator[tuple[Client, Client]]:
    """``app`` served, a member connected to it, and a poster: connected to ``app`` too,
    or to ``publisher`` (another process on the same backend) served beside it."""
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(serving(app))
        poster_url = (
            url if publisher is None else await stack.enter_async_context(serving(publisher))
        )
        member = await stack.enter_async_context(Client(url))
        poster = await stack.enter_async_context(Client(poster_url))
        yield member, poster


async def test_a_room_with_history_delivers_what_the_outage_missed() -> None:
    antenna = CutMemoryAntenna()
    antenna.read_delay = 0.05
    app = history_chat(antenna)
    publisher = history_chat()  # another process, same backend
    async with (
        member_and_poster(app, publisher) as (member, poster),
        member.subscribe("/room", {"room": "chat:o"}) as stream,
    ):
        await say(poster, "chat:o", "m0", "m1")
        before = await take(stream, 2)
        antenna.cut = True
        await say(poster, "chat:o", "m2", "m3", "m4")  # lost by the subscriber side
        antenna.restore()
        await asyncio.sleep(0.01)
        await say(poster, "chat:o", "m5", "m6")  # live while the history is read
        after = await take(stream, 5)
        assert await quiet(stream)
    pushes = before + after
    assert [push.payload for push in pushes] == [f"m{i}" for i in range(7)]
    assert notices(pushes) == []
    offsets = [Position.parse(push.header["position"]).offset for push in pushes]
    assert offsets == sorted(set(offsets))


async def test_two_gaps_during_one_catch_up_lose_nothing() -> None:
    antenna = CutMemoryAntenna()
    antenna.read_delay = 0.05
    app = history_chat(antenna)
    publisher = history_chat()
    async with (
        member_and_poster(app, publisher) as (member, poster),
        member.subscribe("/room", {"room": "chat:twice"}) as stream,
    ):
        await say(poster, "chat:twice", "m0")
        pushes = await take(stream, 1)
        antenna.cut = True
        await say(poster, "chat:twice", "m1")
        antenna.restore()
        await say(poster, "chat:twice", "m2")  # held back: the first read is under way
        antenna.cut = True
        await say(poster, "chat:twice", "m3")  # lost again, before the first read ended
        antenna.restore()
        await say(poster, "chat:twice", "m4")
        pushes += await take(stream, 4)
        assert await quiet(stream)
    assert [push.payload for push in pushes] == [f"m{i}" for i in range(5)]
    assert notices(pushes) == []


async def test_a_lost_history_gives_one_unrecovered_notice_per_room_then_live() -> None:
    antenna = CutMemoryAntenna()
    app = history_chat(antenna)
    async with (
        member_and_poster(app) as (member, poster),
        member.subscribe("/room", {"rooms": ["chat:x", "chat:y"]}) as stream,
    ):
        await say(poster, "chat:x", "x0")
        await say(poster, "chat:y", "y0")
        await take(stream, 2)
        antenna.cut = True
        MemoryAntenna._histories.pop("chat:x")  # the backend forgot them: new epochs
        MemoryAntenna._histories.pop("chat:y")
        await say(poster, "chat:x", "x1")
        antenna.restore()
        notes = await take(stream, 2)
        await say(poster, "chat:x", "x2")
        await say(poster, "chat:y", "y2")
        live = await take(stream, 2)
        assert await quiet(stream)
    assert sorted((p.header["notice"], p.header["room"]) for p in notes) == [
        ("unrecovered", "chat:x"),
        ("unrecovered", "chat:y"),
    ]
    assert all('"code": "unrecovered"' in p.payload for p in notes)
    assert [p.payload for p in live] == ["x2", "y2"]
    assert notices(live) == []


async def test_rooms_without_history_still_get_the_gap_notice() -> None:
    antenna = CutMemoryAntenna()
    app = history_chat(antenna)
    async with (
        member_and_poster(app) as (member, poster),
        member.subscribe("/room", {"room": "plain"}) as plain,
        member.subscribe("/room", {"rooms": ["plain-too", "chat:mixed"]}) as mixed,
        member.subscribe("/room", {"rooms": []}) as alone,
    ):
        await say(poster, "chat:mixed", "m0")
        await take(mixed, 1)
        antenna.cut = True
        antenna.restore()
        for stream in (plain, mixed, alone):
            (push,) = await take(stream, 1)
            assert push.header == {"notice": "gap"}
            assert await quiet(stream, 0.1)


async def test_a_failed_read_gives_unrecovered_and_holds_nothing_back() -> None:
    """The history cannot be read (the backend went away again), whether the room
    delivered a message before the outage or not: unrecovered, then live."""
    antenna = CutMemoryAntenna()
    antenna.read_fails = True
    app = history_chat(antenna)
    async with (
        member_and_poster(app) as (member, poster),
        member.subscribe("/room", {"room": "chat:r"}) as unreadable,
        member.subscribe("/room", {"room": "chat:quiet"}) as quiet_room,
    ):
        await say(poster, "chat:r", "r0")
        await take(unreadable, 1)
        antenna.cut = True
        antenna.restore()
        for stream, room in ((unreadable, "chat:r"), (quiet_room, "chat:quiet")):
            (notice,) = await take(stream, 1)
            assert notice.header == {"notice": "unrecovered", "room": room}
        await say(poster, "chat:r", "r1")
        await say(poster, "chat:quiet", "q1")
        assert [p.payload for p in await take(unreadable, 1)] == ["r1"]
        assert [p.payload for p in await take(quiet_room, 1)] == ["q1"]
        for stream in (unreadable, quiet_room):
            assert await quiet(stream, 0.1)


async def test_a_room_opened_by_a_recovery_catches_up_from_the_recovered_position() -> None:
    """A room opened by a SUB with since has a position before any live message came (the
    last one recovered), so an outage right after is caught up, not unrecovered."""
    antenna = CutMemoryAntenna()
    app = history_chat(antenna)
    async with serving(app) as url, Client(url) as poster:
        async with Client(url) as member, member.subscribe("/room", {"room": "chat:s"}) as first:
            await say(poster, "chat:s", "m0")
            await take(first, 1)
            seen = dict(first.positions)
        await say(poster, "chat:s", "m1")  # while the member is away (the room closed)
        async with (
            Client(url) as member,
            member.subscribe("/room", {"room": "chat:s"}, since=seen) as stream,
        ):
            pushes = await take(stream, 1)
            antenna.cut = True
            await say(poster, "chat:s", "m2")
            antenna.restore()
            pushes += await take(stream, 1)
            assert await quiet(stream)
    assert [push.payload for push in pushes] == ["m1", "m2"]
    assert notices(pushes) == []


async def test_a_message_delivered_already_is_not_pushed_again() -> None:
    """An antenna that hands the room a message again after an outage (the NATS antenna
    fills in what its stream stored meanwhile, which the room may have read from the
    history already): the room pushes each position once."""
    antenna = CutMemoryAntenna()
    app = history_chat(antenna)
    async with (
        serving(app) as url,
        Client(url) as member,
        member.subscribe("/room", {"room": "chat:twice"}) as stream,
    ):
        await say(member, "chat:twice", "m0", "m1")
        first = await take(stream, 2)
        positions = [Position.parse(push.header["position"]) for push in first]
        antenna.deliver_at("chat:twice", "m1 again", positions[1])  # the same position
        antenna.deliver_at("chat:twice", "m0 again", positions[0])  # an older one
        await say(member, "chat:twice", "m2")
        (after,) = await take(stream, 1)
        assert after.payload == "m2"
        assert await quiet(stream)


async def test_a_quiet_room_gets_no_notice_after_an_outage_that_missed_nothing() -> None:
    """A room that delivered nothing yet starts from where its history stood when it
    opened (Antenna.newest_position), so an outage during which nothing was published
    is caught up silently: no unrecovered notice, nothing pushed."""
    antenna = CutMemoryAntenna()
    app = history_chat(antenna)
    async with (
        member_and_poster(app) as (member, poster),
        member.subscribe("/room", {"rooms": ["chat:empty", "chat:older"]}) as stream,
    ):
        antenna.cut = True
        antenna.restore()
        assert await quiet(stream)
        await say(poster, "chat:empty", "e0")
        await say(poster, "chat:older", "o0")
        live = await take(stream, 2)
        assert await quiet(stream)
    assert [push.payload for push in live] == ["e0", "o0"]
    assert notices(live) == []


async def test_a_quiet_room_delivers_what_was_published_during_the_outage() -> None:
    """A quiet room, an outage, messages published meanwhile (by another process): the
    members receive them from the history, once each and in order, without a notice;
    not what the history held before the room opened."""
    antenna = CutMemoryAntenna()
    antenna.read_delay = 0.05
    app = history_chat(antenna)
    publisher = history_chat()
    async with (
        member_and_poster(app, publisher) as (member, poster),
    ):
        await say(poster, "chat:kept", "before0", "before1")  # before the room opened
        async with member.subscribe("/room", {"rooms": ["chat:kept", "chat:new"]}) as stream:
            antenna.cut = True
            await say(poster, "chat:kept", "k0", "k1")
            await say(poster, "chat:new", "n0")  # its history had no epoch before
            antenna.restore()
            await asyncio.sleep(0.01)
            await say(poster, "chat:kept", "k2")  # live while the history is read
            pushes = await take(stream, 4)
            assert await quiet(stream)
    by_room: dict[str, list[str]] = {}
    for push in pushes:
        by_room.setdefault(push.header["room"], []).append(push.payload)
    assert by_room == {"chat:kept": ["k0", "k1", "k2"], "chat:new": ["n0"]}
    assert notices(pushes) == []


class BetweenMemoryAntenna(CutMemoryAntenna):
    """A cut memory antenna on which another process publishes to a room between the
    moment a room reads where its history stands and the moment it is subscribed."""

    name: ClassVar[str] = "between-memory"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.publisher: MemoryAntenna | None = None

    async def newest_position(self, channel: str) -> Position:
        newest = await super().newest_position(channel)
        if self.publisher is not None:
            await self.publisher.post(channel, "between")
        return newest


async def test_what_is_published_while_a_room_opens_is_caught_up_once() -> None:
    """A message published after the room read its starting point and before it was
    subscribed is not received live: the catch-up of an outage right after delivers it,
    once; messages received live are not delivered again by a later catch-up."""
    antenna = BetweenMemoryAntenna()
    app = history_chat(antenna)
    async with serving(app) as url, Client(url) as poster, MemoryAntenna() as other:
        other.set_history(app.antenna.history_of)
        antenna.publisher = other
        async with Client(url) as member, member.subscribe("/room", {"room": "chat:b"}) as stream:
            antenna.publisher = None
            antenna.cut = True
            await say(poster, "chat:b", "missed")
            antenna.restore()
            pushes = await take(stream, 2)
            await say(poster, "chat:b", "live")
            pushes += await take(stream, 1)
            antenna.cut = True
            antenna.restore()
            assert await quiet(stream)
    assert [push.payload for push in pushes] == ["between", "missed", "live"]
    assert notices(pushes) == []


async def test_a_room_opened_by_a_recovery_does_not_deliver_the_recovered_again() -> None:
    """A room opened by a SUB with since, with a message published while it opened
    (after it read where its history stood): the member recovers it from the history,
    and an outage right after does not deliver it a second time."""
    antenna = BetweenMemoryAntenna()
    app = history_chat(antenna)
    async with serving(app) as url, Client(url) as poster, MemoryAntenna() as other:
        other.set_history(app.antenna.history_of)
        async with Client(url) as member, member.subscribe("/room", {"room": "chat:s"}) as first:
            await say(poster, "chat:s", "m0")
            await take(first, 1)
            seen = dict(first.positions)
        antenna.publisher = other  # "between" comes while the room opens again
        async with (
            Client(url) as member,
            member.subscribe("/room", {"room": "chat:s"}, since=seen) as stream,
        ):
            antenna.publisher = None
            pushes = await take(stream, 1)
            antenna.cut = True
            antenna.restore()
            assert await quiet(stream)
            await say(poster, "chat:s", "m1")
            pushes += await take(stream, 1)
    assert [push.payload for push in pushes] == ["between", "m1"]
    assert notices(pushes) == []


class ForgetfulMemoryAntenna(CutMemoryAntenna):
    """A history antenna that does not implement newest_position (a third party's)."""

    name: ClassVar[str] = "forgetful-memory"
    newest_position = Antenna.newest_position  # type: ignore[assignment]


class FailingNewestMemoryAntenna(CutMemoryAntenna):
    """A memory antenna whose newest_position cannot reach the backend."""

    name: ClassVar[str] = "failing-newest-memory"

    async def newest_position(self, channel: str) -> Position:
        raise AntennaUnavailable("the backend did not answer")


@pytest.mark.parametrize("antenna_class", [ForgetfulMemoryAntenna, FailingNewestMemoryAntenna])
async def test_without_a_newest_position_a_quiet_room_behaves_as_before(
    antenna_class: type[CutMemoryAntenna],
) -> None:
    """An antenna that cannot tell (or fails to tell) where a history stands: the room
    opens all the same, and a quiet room gets the unrecovered notice after an outage."""
    antenna = antenna_class()
    app = history_chat(antenna)
    async with (
        member_and_poster(app) as (member, poster),
        member.subscribe("/room", {"room": "chat:q"}) as stream,
    ):
        antenna.cut = True
        antenna.restore()
        (notice,) = await take(stream, 1)
        assert notice.header == {"notice": "unrecovered", "room": "chat:q"}
        await say(poster, "chat:q", "q0")
        assert [push.payload for push in await take(stream, 1)] == ["q0"]
        assert await quiet(stream)
