"""The built-in in-memory antenna: one process, no backend, registered like any plugin."""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Collection, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar

from ..antenna import Antenna
from ..history import HistoryEntry, HistoryPolicy, Position
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..plugins import AntennaRegistry


#: seconds an empty history keeps the epoch ``newest_position`` drew for it (as Redis does)
EMPTY_EPOCH_SECONDS = 86_400.0


class MemoryAntenna(Antenna):
    """Pub/sub inside one process.

    Every ``MemoryAntenna`` of the process shares one bus, so two instances behave
    like two processes sharing a backend. Delivery is synchronous: ``post`` hands
    the message to every listener before it returns.

    It keeps history (the optional capability): each channel with history has a ring
    buffer of its last messages, shared by every instance like the bus, and lost with
    the process. Offsets count up by one from 1; a channel's epoch is drawn when its
    buffer is made, again after the buffer was dropped (every message expired).
    ``newest_position`` of a channel without history makes its (empty) buffer, so that
    the epoch is known before the first message; an empty buffer is kept a day.

    It keeps presence (the optional capability) in a dict per room, shared by every
    instance like the bus; expired members stay until ``presence_expire`` takes them.
    """

    name: ClassVar[str] = "memory"
    #: channel -> antennas watching it, shared by every instance in the process
    _bus: ClassVar[dict[str, list[MemoryAntenna]]] = {}
    #: channel -> its history, shared by every instance in the process
    _histories: ClassVar[dict[str, _History]] = {}
    #: room -> member key -> (expiry on the monotonic clock, info), shared likewise
    _presence: ClassVar[dict[str, dict[str, tuple[float, str]]]] = {}

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        return {}

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        for channel in list(self._bus):
            self._leave(channel)

    async def publish(self, channel: str, message: str) -> None:
        watchers = self._bus.get(channel)
        if not watchers:
            return
        if len(watchers) == 1:
            watchers[0].deliver(channel, message)
            return
        for antenna in tuple(watchers):
            antenna.deliver(channel, message)

    async def publish_with_history(
        self, channel: str, message: str, history: HistoryPolicy
    ) -> Position:
        now = time.monotonic()
        record = _sweep(self._histories, channel, now)
        if record is None:
            record = self._histories[channel] = _History(history.size)
        position = record.append(message, history, now)
        # appended before any listener runs: a reader never misses a delivered message
        watchers = self._bus.get(channel)
        if watchers:
            for antenna in tuple(watchers):
                antenna.deliver_at(channel, message, position)
        return position

    async def read_history(self, channel: str, after: Position) -> list[HistoryEntry] | None:
        record = _sweep(self._histories, channel, time.monotonic())
        if record is None or after.epoch != record.epoch:
            return None
        return record.after(after.offset)

    async def newest_position(self, channel: str) -> Position:
        now = time.monotonic()
        record = _sweep(self._histories, channel, now)
        if record is None:  # the epoch of the next message, drawn now
            record = self._histories[channel] = _History(1, now + EMPTY_EPOCH_SECONDS)
        return Position(record.epoch, record.last_offset)

    async def presence_set(self, room: str, members: Mapping[str, str]) -> None:
        expiry = time.monotonic() + self.presence_ttl
        present = self._presence.setdefault(room, {})
        for member, info in members.items():
            present[member] = (expiry, info)

    async def presence_remove(self, room: str, members: Collection[str]) -> None:
        present = self._presence.get(room)
        if present is None:
            return
        for member in members:
            present.pop(member, None)
        if not present:
            del self._presence[room]

    async def presence_list(self, room: str) -> dict[str, str]:
        now = time.monotonic()
        present = self._presence.get(room, {})
        return {member: info for member, (expiry, info) in present.items() if expiry > now}

    async def presence_expire(self, room: str) -> dict[str, str]:
        present = self._presence.get(room)
        if present is None:
            return {}
        now = time.monotonic()
        expired = {member: info for member, (expiry, info) in present.items() if expiry <= now}
        for member in expired:
            del present[member]
        if not present:
            del self._presence[room]
        return expired

    async def watch(self, channel: str) -> None:
        watchers = self._bus.setdefault(channel, [])
        if self not in watchers:
            watchers.append(self)

    async def unwatch(self, channel: str) -> None:
        self._leave(channel)

    async def is_alive(self, channel: str) -> bool:
        return bool(self._bus.get(channel))

    def _leave(self, channel: str) -> None:
        watchers = self._bus.get(channel)
        if watchers is None:
            return
        if self in watchers:
            watchers.remove(self)
        if not watchers:
            del self._bus[channel]


class _History:
    """One channel's ring buffer: ``(offset, expiry, message)``, oldest first.

    :param empty_until: when nothing was appended yet (made by ``newest_position``),
        the monotonic time until which the empty history keeps its epoch
    """

    __slots__ = ("empty_until", "entries", "epoch", "last_offset")

    def __init__(self, size: int, empty_until: float = 0.0) -> None:
        self.epoch = secrets.token_hex(4)
        self.last_offset = 0
        self.entries: deque[tuple[int, float, str]] = deque(maxlen=size)
        self.empty_until = empty_until

    def append(self, message: str, history: HistoryPolicy, now: float) -> Position:
        if self.entries.maxlen != history.size:  # configured anew: keep the newest
            self.entries = deque(self.entries, maxlen=history.size)
        self.last_offset += 1
        expiry = math.inf if history.ttl is None else now + history.ttl
        self.entries.append((self.last_offset, expiry, message))
        return Position(self.epoch, self.last_offset)

    def expire(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0][1] <= now:
            entries.popleft()

    def after(self, offset: int) -> list[HistoryEntry] | None:
        """The entries after ``offset`` if the one at ``offset`` is still here (offset
        0: the start of the epoch, if its first entry is still here)."""
        entries = self.entries
        if not entries:
            return [] if offset == 0 and self.last_offset == 0 else None
        first = entries[0][0]
        # offsets are contiguous here, so the entry at ``offset`` has this index
        index = offset - first
        if not (0 <= index < len(entries) or (offset == 0 and first == 1)):
            return None
        epoch = self.epoch
        return [
            HistoryEntry(Position(epoch, at), message)
            for at, _, message in islice(entries, index + 1, None)
        ]


def _sweep(histories: dict[str, _History], channel: str, now: float) -> _History | None:
    """``channel``'s history with its expired messages dropped; ``None`` when it has
    none left (the next message starts a new epoch: memory is not kept for idle rooms),
    unless nothing was appended to it yet and it is an epoch drawn by
    ``newest_position`` less than :data:`EMPTY_EPOCH_SECONDS` ago."""
    record = histories.get(channel)
    if record is None:
        return None
    record.expire(now)
    if not record.entries and (record.last_offset or record.empty_until <= now):
        del histories[channel]
        return None
    return record


@hookimpl
def xraptor_register_antennas(registry: AntennaRegistry) -> None:
    registry.add(MemoryAntenna)
