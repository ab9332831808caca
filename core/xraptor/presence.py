"""Presence: who is in a room, across every process, and join / leave notices.

An app turns it on per room with :meth:`xraptor.XRaptor.configure_rooms`
(``presence=True``, and ``join_leave=True`` for the notices). Each stream of this
process that joins such a room (:meth:`~xraptor.Broadcast.add_member`) becomes a
**member** under a key unique across processes, ``"<connection id>:<request id>"``
(request ids are chosen by clients, so two clients may pick the same one), with an
**info**: the connection's identity (what its connect guards returned) when it has
one, else the object the SUB sent in its ``"presence"`` header, else ``null``.

The antenna keeps the members (its optional presence capability); each one expires
``presence_ttl`` seconds (an antenna option) after it was last set, so that the
members of a process that died without cleaning up disappear, and this process sets
its members again every third of that time (:class:`PresenceTracker`), when it also
takes the expired members out of its rooms (one process gets each) and announces
their leave. A member leaves when its stream leaves the room (UNSUB, disconnect,
``remove_member``).

Join and leave notices travel on a channel of their own per room (the room's id
after :data:`NOTICES`), published through the antenna, so that rooms without them
cost nothing more; each process pushes them to its members of the room.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .antenna import PresenceNotSupported
from .protocol import ErrorCode, Request, RequestError, push_tail

if TYPE_CHECKING:
    from .antenna import Antenna
    from .broadcast import Broadcast, RoomTasks
    from .connection import Stream
    from .history import RoomSettings

logger = logging.getLogger("xraptor.presence")

#: the SUB header key carrying the info a client shares (when its connection has no identity)
PRESENCE = "presence"
#: the longest ``presence`` header accepted, in bytes of JSON
MAX_CLIENT_INFO = 1024
#: the longest info a member may have (an identity), in bytes of JSON
MAX_INFO = 8192
#: what starts the channel of a room's join and leave notices (then the room's id)
NOTICES = "\x00xraptor-presence:"


class PresenceNotEnabled(RuntimeError):
    """:meth:`~xraptor.Broadcast.presence` of a room that keeps no presence."""


@dataclass(frozen=True, slots=True)
class RoomPresence:
    """What a room with presence does besides: announce joins and leaves or not."""

    join_leave: bool


class PresenceResolver:
    """The presence settings of a room under some :class:`~xraptor.history.RoomSettings`
    (the last one whose pattern matches wins), remembered per room.

    :param settings: in the order they were configured
    """

    #: rooms remembered before the memo starts over
    MEMO_SIZE = 4096

    def __init__(self, settings: Iterable[RoomSettings]) -> None:
        self._settings = tuple(reversed(tuple(settings)))
        self._memo: dict[str, RoomPresence | None] = {}

    def __call__(self, room: str) -> RoomPresence | None:
        memo = self._memo
        if room in memo:
            return memo[room]
        found = next((s for s in self._settings if s.pattern.match(room)), None)
        presence = RoomPresence(found.join_leave) if found is not None and found.presence else None
        if len(memo) >= self.MEMO_SIZE:
            memo.clear()
        memo[room] = presence
        return presence

    @property
    def keeps_presence(self) -> bool:
        """Whether some room may keep presence under these settings."""
        return any(settings.presence for settings in self._settings)


def client_info(request: Request) -> str | None:
    """The info a SUB shares (its ``"presence"`` header) as JSON text; ``None`` without.

    :raises RequestError: ``invalid_field`` when it is not a JSON object of at most
        :data:`MAX_CLIENT_INFO` bytes
    """
    info = request.header.get(PRESENCE)
    if info is None:
        return None
    text = orjson.dumps(info) if type(info) is dict else b""
    if not text or len(text) > MAX_CLIENT_INFO:
        raise RequestError.about(
            request,
            ErrorCode.INVALID_FIELD,
            f'header "presence" must be a JSON object of at most {MAX_CLIENT_INFO} bytes '
            "(what the room's other members see of this one)",
        )
    return text.decode()


def member_key(stream: Stream) -> str:
    """The stream's key in presence: ``"<connection id>:<request id>"``."""
    return f"{stream.connection.connection_id}:{stream.request_id}"


def member_info(stream: Stream) -> str:
    """The stream's info as JSON text: its connection's identity, else what its SUB
    shared, else ``null``.

    :raises TypeError: the identity is not JSON-serialisable
    :raises ValueError: its JSON is over :data:`MAX_INFO` bytes
    """
    identity = stream.connection.identity
    if identity is None:
        return stream.presence or "null"
    try:
        text = orjson.dumps(identity)
    except TypeError as error:
        raise TypeError(
            "a room with presence shares each member's identity with every process, so the "
            f"connect guards must return something JSON-serialisable (a dict, a str ...); "
            f"got {type(identity).__name__}: {error}"
        ) from None
    if len(text) > MAX_INFO:
        raise ValueError(
            f"a member's identity is shared in presence and may be at most {MAX_INFO} bytes "
            f"of JSON; this one is {len(text)}"
        )
    return text.decode()


async def room_presence(room: Broadcast, settings: RoomPresence | None) -> dict[str, Any]:
    """The members of ``room`` in every process: key -> info (see the module doc).

    :raises PresenceNotEnabled: the room keeps no presence
    :raises AntennaUnavailable: the antenna cannot answer now
    """
    if settings is None:
        raise PresenceNotEnabled(
            f"room {room.broadcast_id[:64]!r} keeps no presence: configure its rooms with "
            "app.configure_rooms(pattern, presence=True) before the app starts"
        )
    listed = await room.antenna.presence_list(room.broadcast_id)
    return {key: orjson.loads(info) for key, info in listed.items()}


class _Room:
    """This process's members of one room with presence, and its notice listener."""

    __slots__ = ("antenna", "channel", "headers", "listening", "lock", "members", "room_id")

    def __init__(self, antenna: Antenna, room_id: str, join_leave: bool) -> None:
        self.antenna = antenna
        self.room_id = room_id
        #: key -> (stream, info)
        self.members: dict[str, tuple[Stream, str]] = {}
        self.lock = asyncio.Lock()
        #: the notices' channel (``""``: the room announces nothing)
        self.channel = NOTICES + room_id if join_leave else ""
        self.listening = False
        room_json = orjson.dumps(room_id)
        self.headers = {
            kind: b'{"notice":"' + kind.encode() + b'","room":' + room_json + b"}"
            for kind in ("join", "leave")
        }

    # hub listener of the notices' channel: "<join|leave>\n<payload>"
    def on_message(self, channel: str, message: str) -> None:
        kind, _, payload = message.partition("\n")
        header = self.headers.get(kind)
        if header is None:
            return
        tail = push_tail(payload, header)
        for stream, _ in tuple(self.members.values()):
            stream.connection.push(stream.prefix + tail)

    def on_gap(self, channel: str) -> None:
        return None  # the room's own channel tells its members of the gap

    async def listen(self) -> None:
        """Receive the room's notices, if it has any and members to push them to."""
        if self.channel and not self.listening and self.members:
            await self.antenna.listen(self.channel, self)
            self.listening = True

    async def announce(self, kind: str, key: str, info: str) -> None:
        payload = b'{"member":' + orjson.dumps(key) + b',"info":' + info.encode() + b"}"
        # post, not publish: should a history pattern match the channel, the antenna
        # both publishes and watches it as a channel with history, consistently
        await self.antenna.post(self.channel, f"{kind}\n{payload.decode()}")


class PresenceTracker:
    """An app's presence: which rooms keep it, and this process's members of them,
    which it sets again every third of the antenna's ``presence_ttl``.

    :param tasks: the app's room tasks (a SUB waits for its member's presence)
    """

    def __init__(self, tasks: RoomTasks) -> None:
        self._tasks = tasks
        self._resolver: PresenceResolver | None = None
        self._rooms: dict[str, _Room] = {}
        self._refresher: asyncio.Task[None] | None = None

    def configure(self, resolver: PresenceResolver | None, antenna: Antenna) -> None:
        """Which rooms keep presence (the app does, at start).

        :raises PresenceNotSupported: rooms keep presence and the antenna cannot
        """
        if resolver is not None and not antenna.can_keep_presence:
            raise PresenceNotSupported(
                f"the {antenna.name or type(antenna).__name__} antenna cannot keep presence, "
                "and rooms were configured with presence=True; use an antenna that can "
                "(memory, redis, nats) or configure the rooms without presence"
            )
        self._resolver = resolver

    def settings(self, room_id: str) -> RoomPresence | None:
        """The presence settings of ``room_id`` (``None``: it keeps no presence)."""
        resolver = self._resolver
        return None if resolver is None else resolver(room_id)

    def enter(self, room: Broadcast, stream: Stream, settings: RoomPresence) -> None:
        """``stream`` joined ``room``: make it a member (a room task).

        :raises TypeError: the connection's identity is not JSON-serialisable
        :raises ValueError: it is too large
        """
        info = member_info(stream)
        room_id = room.broadcast_id
        present = self._rooms.get(room_id)
        if present is None or present.antenna is not room.antenna:
            present = self._rooms[room_id] = _Room(room.antenna, room_id, settings.join_leave)
        key = member_key(stream)
        if key in present.members:
            return
        present.members[key] = (stream, info)
        self._tasks.track(self._enter(present, key, info))
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    def leave(self, room: Broadcast, stream: Stream) -> None:
        """``stream`` left ``room``: it is no longer a member (a room task)."""
        present = self._rooms.get(room.broadcast_id)
        if present is None:
            return
        key = member_key(stream)
        entry = present.members.pop(key, None)
        if entry is not None:
            self._tasks.track(self._leave(present, key, entry[1]))

    async def _enter(self, present: _Room, key: str, info: str) -> None:
        async with present.lock:
            try:
                await present.listen()
                await present.antenna.presence_set(present.room_id, {key: info})
                if present.channel:
                    await present.announce("join", key, info)
            except Exception as error:  # the next refresh sets it again
                logger.warning(
                    "room %.64r: presence of a member failed: %r", present.room_id, error
                )

    async def _leave(self, present: _Room, key: str, info: str) -> None:
        async with present.lock:
            antenna = present.antenna
            try:
                await antenna.presence_remove(present.room_id, (key,))
                if present.channel:
                    await present.announce("leave", key, info)
            except Exception as error:  # it expires within presence_ttl
                logger.warning(
                    "room %.64r: presence of a leaver failed: %r", present.room_id, error
                )
            if present.members:
                return
            if self._rooms.get(present.room_id) is present:
                del self._rooms[present.room_id]
            if not self._rooms and self._refresher is not None:
                self._refresher.cancel()
                self._refresher = None
            if present.listening:
                present.listening = False
                try:
                    await antenna.unlisten(present.channel, present)
                except Exception:
                    logger.exception("room %.64r: could not stop its notices", present.room_id)

    async def _refresh(self) -> None:
        """Every third of ``presence_ttl``: set every member of this process again, and
        take the expired members out of its rooms (announcing their leave)."""
        while self._rooms:
            ttl = min(present.antenna.presence_ttl for present in self._rooms.values())
            await asyncio.sleep(ttl / 3)
            for present in tuple(self._rooms.values()):
                members = {key: info for key, (_, info) in present.members.items()}
                if not members or present.antenna.state == "closed":
                    continue
                try:
                    async with present.lock:
                        await present.listen()
                        await present.antenna.presence_set(present.room_id, members)
                        expired = await present.antenna.presence_expire(present.room_id)
                        if present.channel:
                            for key, info in expired.items():
                                await present.announce("leave", key, info)
                except Exception as error:  # tried again at the next refresh
                    logger.warning("room %.64r: refreshing presence: %r", present.room_id, error)
