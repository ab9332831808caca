"""The conformance suite of the optional presence capability.

An antenna that declares presence (implements ``presence_set``, ``presence_remove``
and ``presence_list``; :attr:`~xraptor.Antenna.can_keep_presence`) runs this suite
besides :class:`~xraptor.testing.AntennaConformance`, with the same fixture::

    from xraptor.testing import PresenceConformance

    class TestMyAntennaPresence(PresenceConformance):
        @pytest.fixture
        def antenna_factory(self, my_backend_url):
            return lambda: MyAntenna(url=my_backend_url)

Two antennas from the factory must behave like two processes sharing one backend.
The suite sets :attr:`~xraptor.Antenna.presence_ttl` of the antennas it makes to
:attr:`PresenceConformance.TTL` before starting them (so a driver must read it when
it starts, or at each call, not only in ``__init__``). Every test uses rooms of its
own (a random suffix).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ..antenna import Antenna
from ._pair import AntennaPair
from .conformance import eventually


class PresenceConformance(AntennaPair):
    """The presence capability. Subclasses provide the ``antenna_factory`` fixture."""

    #: the members' time to live in this suite, seconds
    TTL = 1.5

    def prepare(self, antenna: Antenna) -> None:
        antenna.presence_ttl = self.TTL

    @pytest.fixture
    def room(self) -> str:
        return f"xraptor-presence-{uuid.uuid4().hex[:12]}"

    @pytest.mark.asyncio
    async def test_declares_presence(self, antenna: Antenna) -> None:
        assert antenna.can_keep_presence, (
            f"{type(antenna).__name__} runs the presence suite but does not implement "
            "presence_set, presence_remove and presence_list"
        )

    @pytest.mark.asyncio
    async def test_members_are_seen_by_every_process(
        self, antenna: Antenna, other: Antenna, room: str
    ) -> None:
        assert await antenna.presence_list(room) == {}
        await antenna.presence_set(room, {"c1:a": '{"user":"ann"}', "c1:b": "null"})
        await other.presence_set(room, {"c2:a": '"bob"'})
        expected = {"c1:a": '{"user":"ann"}', "c1:b": "null", "c2:a": '"bob"'}
        assert await antenna.presence_list(room) == expected
        assert await other.presence_list(room) == expected

    @pytest.mark.asyncio
    async def test_removed_members_are_gone_everywhere(
        self, antenna: Antenna, other: Antenna, room: str
    ) -> None:
        await antenna.presence_set(room, {"c1:a": "1", "c1:b": "2"})
        await other.presence_remove(room, ["c1:a", "never-there"])
        assert await antenna.presence_list(room) == {"c1:b": "2"}
        await antenna.presence_remove(room, ["c1:b"])
        assert await other.presence_list(room) == {}
        await antenna.presence_remove(f"{room}-never", ["x"])  # nothing to remove: no error

    @pytest.mark.asyncio
    async def test_setting_again_replaces_the_info(
        self, antenna: Antenna, other: Antenna, room: str
    ) -> None:
        await antenna.presence_set(room, {"c1:a": '"away"'})
        await antenna.presence_set(room, {"c1:a": '"here"'})
        assert await other.presence_list(room) == {"c1:a": '"here"'}

    @pytest.mark.asyncio
    async def test_members_not_set_again_expire_and_refreshed_ones_stay(
        self, antenna: Antenna, other: Antenna, room: str
    ) -> None:
        """A process that died stops setting its members: they are no longer listed
        once the ttl passed (whether taken out yet or not); a live one's stay."""
        await antenna.presence_set(room, {"dead:a": "1"})
        await other.presence_set(room, {"live:a": "2"})
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def refresh() -> None:
            while True:
                await asyncio.sleep(self.TTL / 3)
                await other.presence_set(room, {"live:a": "2"})

        refresher = asyncio.ensure_future(refresh())
        try:

            async def expired() -> bool:
                return await other.presence_list(room) == {"live:a": "2"}

            assert await eventually(expired, timeout=self.TTL * 3, interval=0.1)
            assert loop.time() - start > self.TTL * 0.9, "expired before its ttl"
            await asyncio.sleep(self.TTL)  # the refreshed one outlives several ttls
            assert await antenna.presence_list(room) == {"live:a": "2"}
        finally:
            refresher.cancel()

    @pytest.mark.asyncio
    async def test_expired_members_are_taken_out_once(
        self, antenna: Antenna, other: Antenna, room: str
    ) -> None:
        """Each expired member is returned by one ``presence_expire`` call, whichever
        process makes it (its leave is announced once); live members never are."""
        await antenna.presence_set(room, {"dead:a": '"a"', "dead:b": '"b"'})
        await other.presence_set(room, {"live:a": '"l"'})
        assert await antenna.presence_expire(room) == {}
        await asyncio.sleep(self.TTL * 0.6)
        await other.presence_set(room, {"live:a": '"l"'})
        await asyncio.sleep(self.TTL * 0.6)  # the dead ones expired, the live one did not
        assert await antenna.presence_list(room) == {"live:a": '"l"'}
        taken = await asyncio.gather(*(a.presence_expire(room) for a in (antenna, other) * 3))
        merged = [item for result in taken for item in result.items()]
        assert sorted(merged) == [("dead:a", '"a"'), ("dead:b", '"b"')]
        assert await other.presence_expire(room) == {}
        assert await antenna.presence_list(room) == {"live:a": '"l"'}

    @pytest.mark.asyncio
    async def test_rooms_keep_their_own_members(self, antenna: Antenna, room: str) -> None:
        names = [room, f"{room}.1", f"{room}.*", f"{room} é 中", f"{room}:{{x}}", room + "x" * 300]
        for name in names:
            await antenna.presence_set(name, {f"k:{name}": '"v"'})
        for name in names:
            assert await antenna.presence_list(name) == {f"k:{name}": '"v"'}

    @pytest.mark.asyncio
    async def test_odd_keys_and_large_infos_come_back_unchanged(
        self, antenna: Antenna, other: Antenna, room: str
    ) -> None:
        members = {
            "c:é 中 🦖": '{"name": "olá 🦖 — \\u0000 \\"quoted\\""}',
            "c:" + "k" * 300: '"' + "x" * 8000 + '"',
            "c:a.b*>": "[1, 2, 3]",
        }
        await antenna.presence_set(room, members)
        assert await other.presence_list(room) == members
        await other.presence_remove(room, list(members))
        assert await antenna.presence_list(room) == {}

    @pytest.mark.asyncio
    async def test_many_members_at_once(self, antenna: Antenna, other: Antenna, room: str) -> None:
        members = {f"conn:{i}": f'{{"i": {i}}}' for i in range(300)}
        await antenna.presence_set(room, members)
        assert await other.presence_list(room) == members
