"""The conformance suite of the optional history capability.

An antenna that declares history (implements ``publish_with_history`` and
``read_history``; :attr:`~xraptor.Antenna.can_keep_history`) runs this suite besides
:class:`~xraptor.testing.AntennaConformance`, with the same fixture::

    from xraptor.testing import AntennaConformance, HistoryConformance

    class TestMyAntenna(AntennaConformance):
        @pytest.fixture
        def antenna_factory(self, my_backend_url):
            return lambda: MyAntenna(url=my_backend_url)

    class TestMyAntennaHistory(HistoryConformance):
        @pytest.fixture
        def antenna_factory(self, my_backend_url):
            return lambda: MyAntenna(url=my_backend_url)

Two antennas from the factory must behave like two processes sharing one backend.
Every test uses channels of its own (a random suffix), so a backend that outlives
the run does not mix runs.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import ClassVar

import pytest

from ..antenna import Antenna
from ..history import HistoryEntry, HistoryPolicy, Position
from ._pair import AntennaPair

#: plenty of history: nothing is trimmed unless a test says so
ROOMY = HistoryPolicy(size=1000)


class _Recorder:
    """A hub listener that records what it receives, positions included."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[str, Position | None]] = asyncio.Queue()

    def on_message(self, channel: str, message: str) -> None:
        self.received.put_nowait((message, None))

    def on_message_at(self, channel: str, message: str, position: Position) -> None:
        self.received.put_nowait((message, position))

    def on_gap(self, channel: str) -> None:
        return None

    def on_closed(self) -> None:
        return None

    async def next(self, timeout: float = 5.0) -> tuple[str, Position | None]:
        return await asyncio.wait_for(self.received.get(), timeout)


class HistoryConformance(AntennaPair):
    """The history capability. Subclasses provide the ``antenna_factory`` fixture.

    The cases of :meth:`~xraptor.Antenna.newest_position` (optional) are skipped for an
    antenna that does not implement it; one that cannot tell where an *empty* history
    starts (it answers ``None`` there) sets :attr:`newest_of_empty_history` to False.
    """

    #: whether ``newest_position`` of an empty history is a position (else ``None``)
    newest_of_empty_history: ClassVar[bool] = True

    @pytest.fixture
    def channel(self) -> str:
        return f"xraptor-history-{uuid.uuid4().hex[:12]}"

    async def _publish(
        self, antenna: Antenna, channel: str, count: int, policy: HistoryPolicy = ROOMY
    ) -> list[Position]:
        return [await antenna.publish_with_history(channel, f"m{i}", policy) for i in range(count)]

    @pytest.mark.asyncio
    async def test_declares_history(self, antenna: Antenna) -> None:
        assert antenna.can_keep_history, (
            f"{type(antenna).__name__} runs the history suite but does not implement "
            "both publish_with_history and read_history"
        )

    @pytest.mark.asyncio
    async def test_positions_grow_within_one_epoch(self, antenna: Antenna, channel: str) -> None:
        positions = await self._publish(antenna, channel, 20)
        assert all(isinstance(p, Position) for p in positions)
        assert len({p.epoch for p in positions}) == 1
        offsets = [p.offset for p in positions]
        assert offsets == sorted(set(offsets)), "offsets must strictly increase"
        for position in positions:
            assert Position.parse(str(position)) == position

    @pytest.mark.asyncio
    async def test_listeners_receive_messages_with_their_positions(
        self, antenna: Antenna, other: Antenna, channel: str
    ) -> None:
        here, there = _Recorder(), _Recorder()
        await antenna.listen(channel, here)
        await other.listen(channel, there)
        try:
            async with antenna.subscribe(channel) as plain:  # a listener without positions
                positions = await self._publish(other, channel, 10)
                expected = [(f"m{i}", positions[i]) for i in range(10)]
                assert [await here.next() for _ in range(10)] == expected
                assert [await there.next() for _ in range(10)] == expected
                plain_got = [await asyncio.wait_for(plain.__anext__(), 5) for _ in range(10)]
                assert plain_got == [f"m{i}" for i in range(10)]
        finally:
            await antenna.unlisten(channel, here)
            await other.unlisten(channel, there)

    @pytest.mark.asyncio
    async def test_reads_what_followed_a_position(
        self, antenna: Antenna, other: Antenna, channel: str
    ) -> None:
        positions = await self._publish(antenna, channel, 10)
        expected = [HistoryEntry(positions[i], f"m{i}") for i in range(4, 10)]
        assert await antenna.read_history(channel, positions[3]) == expected
        assert await other.read_history(channel, positions[3]) == expected
        assert await other.read_history(channel, positions[-1]) == []

    @pytest.mark.asyncio
    async def test_trimmed_history_is_not_recovered(self, antenna: Antenna, channel: str) -> None:
        positions = await self._publish(antenna, channel, 6, HistoryPolicy(size=3))
        for trimmed in positions[:3]:
            assert await antenna.read_history(channel, trimmed) is None
        assert await antenna.read_history(channel, positions[3]) == [
            HistoryEntry(positions[4], "m4"),
            HistoryEntry(positions[5], "m5"),
        ]
        assert await antenna.read_history(channel, positions[5]) == []

    @pytest.mark.asyncio
    async def test_expired_history_is_not_recovered(self, antenna: Antenna, channel: str) -> None:
        policy = HistoryPolicy(size=10, ttl=0.3)
        positions = await self._publish(antenna, channel, 3, policy)
        assert await antenna.read_history(channel, positions[0]) is not None
        await asyncio.sleep(0.6)
        for position in positions:
            assert await antenna.read_history(channel, position) is None
        # a position is never given twice: a later message has a new epoch or a greater offset
        later = await antenna.publish_with_history(channel, "later", policy)
        assert later.epoch != positions[-1].epoch or later.offset > positions[-1].offset

    @pytest.mark.asyncio
    async def test_unknown_positions_are_not_recovered(
        self, antenna: Antenna, channel: str
    ) -> None:
        positions = await self._publish(antenna, channel, 3)
        last = positions[-1]
        assert await antenna.read_history(channel, Position(f"x{last.epoch}", last.offset)) is None
        assert await antenna.read_history(channel, Position(last.epoch, last.offset + 1000)) is None
        assert await antenna.read_history(f"{channel}-never", last) is None

    @pytest.mark.asyncio
    async def test_delivered_messages_are_already_in_history(
        self, antenna: Antenna, other: Antenna, channel: str
    ) -> None:
        """Publishing and appending are one step: whoever receives a message finds it
        in the history when it reads at once (recovery relies on it)."""
        first = await other.publish_with_history(channel, "first", ROOMY)
        recorder = _Recorder()
        await antenna.listen(channel, recorder)
        try:
            publishing = asyncio.gather(*(self._publish(other, channel, 25) for _ in range(2)))
            for _ in range(50):
                message, position = await recorder.next()
                history = await antenna.read_history(channel, first)
                assert position is not None and history is not None
                assert HistoryEntry(position, message) in history
            await publishing
        finally:
            await antenna.unlisten(channel, recorder)

    @pytest.mark.asyncio
    async def test_concurrent_publishers_share_one_order(
        self, antenna: Antenna, other: Antenna, channel: str
    ) -> None:
        """Messages of several processes get one order: the order listeners receive
        them in, the order of their offsets and the history's order are the same."""
        first = await antenna.publish_with_history(channel, "first", ROOMY)
        recorder = _Recorder()
        await antenna.listen(channel, recorder)
        try:

            async def publish(source: Antenna, name: str) -> None:
                for i in range(40):
                    await source.publish_with_history(channel, f"{name}{i}", ROOMY)

            await asyncio.gather(publish(antenna, "a"), publish(other, "b"))
            received = [await recorder.next() for _ in range(80)]
        finally:
            await antenna.unlisten(channel, recorder)
        entries = [HistoryEntry(p, m) for m, p in received if p is not None]
        offsets = [entry.position.offset for entry in entries]
        assert len(offsets) == 80 and offsets == sorted(set(offsets))
        assert await other.read_history(channel, first) == entries
        for name in "ab":
            mine = [m for m, _ in received if m.startswith(name)]
            assert mine == [f"{name}{i}" for i in range(40)]

    @pytest.mark.asyncio
    async def test_channels_keep_their_own_history(self, antenna: Antenna, channel: str) -> None:
        names = [channel, f"{channel}.1", f"{channel}.*", f"{channel} é 中"]
        firsts = {name: await antenna.publish_with_history(name, "first", ROOMY) for name in names}
        for name in names:
            await antenna.publish_with_history(name, f"for {name}", ROOMY)
        for name in names:
            history = await antenna.read_history(name, firsts[name])
            assert history is not None and [entry.message for entry in history] == [f"for {name}"]

    @pytest.mark.asyncio
    async def test_large_and_non_ascii_messages_come_back_unchanged(
        self, antenna: Antenna, channel: str
    ) -> None:
        texts = ["x" * 256_000, 'olá 🦖 — 中文 \u0000 "quoted" \\ end', ""]
        first = await antenna.publish_with_history(channel, "first", ROOMY)
        for text in texts:
            await antenna.publish_with_history(channel, text, ROOMY)
        history = await antenna.read_history(channel, first)
        assert history is not None and [entry.message for entry in history] == texts

    # ----- newest_position (optional) ------------------------------------------------

    @staticmethod
    def _newest_told(policy: HistoryPolicy, *antennas: Antenna) -> None:
        """Skip unless the antennas tell newest positions; say the channels' policy (as
        an app does at start: an antenna may need it to find a room's history)."""
        for antenna in antennas:
            if not antenna.can_tell_newest_position:
                pytest.skip(f"{type(antenna).__name__} does not implement newest_position")
            antenna.set_history(lambda _channel: policy)

    @pytest.mark.asyncio
    async def test_newest_position_is_the_last_appended(
        self, antenna: Antenna, other: Antenna, channel: str
    ) -> None:
        self._newest_told(ROOMY, antenna, other)
        positions = await self._publish(antenna, channel, 5)
        newest = await other.newest_position(channel)
        assert newest == positions[-1]
        assert await antenna.newest_position(channel) == newest
        later = [await other.publish_with_history(channel, f"n{i}", ROOMY) for i in range(3)]
        expected = [HistoryEntry(later[i], f"n{i}") for i in range(3)]
        assert await antenna.read_history(channel, newest) == expected
        assert await antenna.newest_position(channel) == later[-1]
        assert await other.read_history(channel, later[-1]) == []

    @pytest.mark.asyncio
    async def test_newest_position_of_an_empty_history(
        self, antenna: Antenna, other: Antenna, channel: str
    ) -> None:
        """An empty history has a position too (offset 0 of the epoch its next message
        will have): reading after it gives every message published since."""
        self._newest_told(ROOMY, antenna, other)
        start = await antenna.newest_position(channel)
        if not self.newest_of_empty_history:
            assert start is None
            return
        assert start is not None, "an empty history has a position: offset 0 of its epoch"
        assert start.offset == 0
        assert await other.newest_position(channel) == start, "one epoch for every process"
        assert await other.read_history(channel, start) == []
        later = [await other.publish_with_history(channel, f"n{i}", ROOMY) for i in range(3)]
        assert [p.epoch for p in later] == [start.epoch] * 3, "the epoch drawn is the one used"
        expected = [HistoryEntry(later[i], f"n{i}") for i in range(3)]
        assert await antenna.read_history(channel, start) == expected
        assert await antenna.newest_position(channel) == later[-1]

    @pytest.mark.asyncio
    async def test_the_start_of_a_trimmed_history_is_not_recovered(
        self, antenna: Antenna, channel: str
    ) -> None:
        small = HistoryPolicy(size=2)
        self._newest_told(small, antenna)
        start = await antenna.newest_position(channel)
        if start is None:
            pytest.skip("newest_position of an empty history is None for this antenna")
        positions = await self._publish(antenna, channel, 4, small)
        assert await antenna.read_history(channel, start) is None, "the first two were trimmed"
        assert await antenna.read_history(channel, positions[2]) == [
            HistoryEntry(positions[3], "m3")
        ]

    @pytest.mark.asyncio
    async def test_newest_position_after_the_history_expired(
        self, antenna: Antenna, channel: str
    ) -> None:
        """Once every message expired, the newest position never lets a later read
        return what expired; the messages published after it are read after it."""
        policy = HistoryPolicy(size=10, ttl=0.3)
        self._newest_told(policy, antenna)
        positions = await self._publish(antenna, channel, 2, policy)
        await asyncio.sleep(0.6)
        newest = await antenna.newest_position(channel)
        if newest is None:
            assert not self.newest_of_empty_history
            return
        old = positions[-1]
        assert newest.epoch != old.epoch or newest.offset >= old.offset
        history = await antenna.read_history(channel, newest)
        assert history is None or history == []
        later = await antenna.publish_with_history(channel, "later", policy)
        if history is not None:
            assert await antenna.read_history(channel, newest) == [HistoryEntry(later, "later")]
