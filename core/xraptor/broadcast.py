"""Broadcast rooms: many streams receive every message posted to the room's channel.

Rooms belong to an app (``Broadcast.get(room, app=...)``; by default the app serving
the current request, else the default app).

A room listens to its channel once per process and writes each message to its
local members directly: one backend delivery per process and one encoding of
the message per room, whatever the number of members. A member that is not a
stream of this process (an id another process serves) is forwarded to with a
post on its own channel, as xraptor 0.4 did, and pruned when no longer alive.

A room that keeps history (:meth:`xraptor.XRaptor.configure_rooms`) receives each
message with its position and pushes it with the header ``{"room", "position"}``;
a member whose SUB asked to recover (``since``) has its live messages held back
until :mod:`xraptor.recovery` has pushed the history it missed. Such a room also
remembers the last position it delivered (from its opening on, where the history
stood then, when the antenna can tell: :meth:`xraptor.Antenna.newest_position`): when
the antenna reports a gap (a backend outage), it reads what followed from the history
and delivers it instead of the gap notice, holding live messages back meanwhile
(:func:`xraptor.recovery.catch_up`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from .antenna import Antenna
from .context import current_app
from .history import HistoryEntry, Position
from .presence import room_presence
from .protocol import push_tail
from .recovery import catch_up

if TYPE_CHECKING:
    from .app import App
    from .connection import Stream

logger = logging.getLogger("xraptor.broadcast")

_PRUNE_SECONDS = 7.0


class RoomTasks:
    """An app's room tasks (subscribing, forwarding), which requests wait for."""

    def __init__(self) -> None:
        #: the tasks not finished yet (requests test it before waiting: a set is cheap)
        self.pending: set[asyncio.Task[None]] = set()

    def track(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task that :meth:`settle` waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def settle(self) -> None:
        """Wait until every room opened so far is subscribed on the antenna."""
        while self.pending:
            await asyncio.gather(*tuple(self.pending), return_exceptions=True)


class Broadcast:
    """A room of an app. Get one with :meth:`Broadcast.get`; it lives while it has members."""

    def __init__(self, broadcast_id: str, antenna: Antenna, app: App | None = None) -> None:
        if not isinstance(broadcast_id, str) or not broadcast_id:
            raise ValueError(f"a room id must be a non-empty str, got {broadcast_id!r}")
        self.broadcast_id = broadcast_id
        self.antenna = antenna
        self._app = app if app is not None else current_app()
        self._local: dict[str, Stream] = {}
        self._remote: set[str] = set()
        self._listening = False
        self._prune_task: asyncio.Task[None] | None = None
        self._closed = False
        #: why the room's last subscription failed (``None``: it did not); a SUB whose
        #: handler joined a room that could not subscribe is refused
        self.failure: Exception | None = None
        #: members recovering history (SUB ``since``) -> their live messages meanwhile
        self._recovering: dict[str, list[HistoryEntry]] = {}
        #: the room id as JSON, for the headers of positioned pushes (made on first use)
        self._id_json = b""
        #: (rooms with history) the position of the last message delivered here (at
        #: first, where the history stood when the room opened), from which the room
        #: catches up after a backend outage
        self.last_position: Position | None = None
        #: where the history stood when the room opened (``last_position`` until the
        #: room delivers or recovers a message; ``None``: the antenna could not tell)
        self.opened_at: Position | None = None
        #: while it catches up after an outage: the live messages that came meanwhile
        self.catching_up: list[HistoryEntry] | None = None
        #: another gap came while catching up (the catch-up reads again)
        self.gap_again = False
        self._catch_up: asyncio.Task[None] | None = None

    @classmethod
    def get(cls, broadcast_id: str, app: App | None = None) -> Broadcast:
        """The room with this id of ``app`` (default: the app serving the current
        request, else the default app), created on demand."""
        if app is None:
            app = current_app()
        antenna = app.antenna
        room = app.rooms.get(broadcast_id)
        if room is None or room.antenna is not antenna or room._closed:
            room = app.rooms[broadcast_id] = Broadcast(broadcast_id, antenna, app)
        return room

    @property
    def members(self) -> list[str]:
        return [*self._local, *self._remote]

    def add_member(self, member: str) -> None:
        """Add a member (a SUB's request_id); the first member opens the room. In a room
        with presence, a stream of this process becomes a member there too.

        Safe to call from a SUB handler without awaiting: the server waits for the
        room to be subscribed before it reads the connection's next request. Use
        :meth:`join` to await it yourself.
        """
        if not isinstance(member, str) or not member:
            raise ValueError(f"a room member must be a non-empty str, got {member!r}")
        stream = self._app.streams.get(member)
        if stream is not None:
            presence = self._app.presence_tracker
            settings = presence.settings(self.broadcast_id)
            if settings is not None:  # raises on an identity it cannot share
                presence.enter(self, stream, settings)
            self._local[member] = stream
            stream.rooms.add(self)
            since = stream.since
            if since is not None and self.broadcast_id in since:
                self._recovering.setdefault(member, [])
        else:
            self._remote.add(member)
            self._ensure_prune()
        self._closed = False
        self._app.rooms.setdefault(self.broadcast_id, self)
        if not self._listening:
            self._listening = True
            self._app.room_tasks.track(self._listen())

    async def join(self, member: str) -> None:
        """:meth:`add_member`, then wait until the room receives messages."""
        self.add_member(member)
        await self._app.room_tasks.settle()

    def remove_member(self, member: str) -> None:
        """Remove a member; the room closes when the last one leaves."""
        stream = self._local.pop(member, None)
        if stream is not None:
            stream.rooms.discard(self)
            self._app.presence_tracker.leave(self, stream)
        if self._recovering:
            self._recovering.pop(member, None)
        self._remote.discard(member)
        if not self._local and not self._remote:
            self._close()

    async def post(self, message: str) -> None:
        """Publish ``message`` to every member in every process."""
        await self.antenna.post(self.broadcast_id, message)

    async def presence(self) -> dict[str, Any]:
        """Who is in the room, in every process: each member's key
        (``"<connection id>:<request id>"``) and info (see :mod:`xraptor.presence`).

        :raises PresenceNotEnabled: the room keeps no presence (``configure_rooms``)
        :raises AntennaUnavailable: the antenna cannot answer now
        """
        settings = self._app.presence_tracker.settings(self.broadcast_id)
        return await room_presence(self, settings)

    @classmethod
    async def settle(cls, app: App | None = None) -> None:
        """Wait until every room of ``app`` (default: the current app) opened so far
        is subscribed on the antenna."""
        await (app if app is not None else current_app()).room_tasks.settle()

    # hub listener ---------------------------------------------------------------

    def on_message(self, channel: str, message: str) -> None:
        if self._local:
            tail = push_tail(message)
            for stream in tuple(self._local.values()):
                stream.connection.push(stream.prefix + tail)
        if self._remote:
            self._app.room_tasks.track(self._forward(message))

    def on_message_at(self, channel: str, message: str, position: Position) -> None:
        """A message of a room with history: pushed with its room and position (held
        back while the room catches up after an outage)."""
        catching_up = self.catching_up
        if catching_up is not None:
            catching_up.append(HistoryEntry(position, message))
            return
        last = self.last_position
        if last is not None and position.offset <= last.offset and position.epoch == last.epoch:
            return  # delivered already (from the history, while catching up)
        self.deliver_at(message, position)

    def deliver_at(self, message: str, position: Position) -> None:
        """Push a message of a room with history to its members, with its position."""
        self.last_position = position
        if self._local:
            tail = push_tail(message, self.position_header(position))
            recovering = self._recovering
            for member, stream in tuple(self._local.items()):
                if recovering:
                    held = recovering.get(member)
                    if held is not None:
                        held.append(HistoryEntry(position, message))
                        continue
                stream.connection.push(stream.prefix + tail)
        if self._remote:
            self._app.room_tasks.track(self._forward(message))

    def position_header(self, position: Position) -> bytes:
        """The header of this room's push at ``position``: ``{"room": ..., "position": ...}``."""
        if not self._id_json:
            self._id_json = orjson.dumps(self.broadcast_id)
        return b'{"room":' + self._id_json + b',"position":' + orjson.dumps(str(position)) + b"}"

    def held_back(self, member: str) -> list[HistoryEntry] | None:
        """End ``member``'s recovery: the live messages held back for it (``None``: it
        was not recovering, or left the room); later ones are pushed to it at once."""
        return self._recovering.pop(member, None)

    def on_gap(self, channel: str) -> None:
        if self.keeps_history:
            # catch up from the history instead of the gap notice (xraptor.recovery)
            if self.catching_up is None:
                self.catching_up = []
            if self._catch_up is None or self._catch_up.done():
                self.gap_again = False
                self._catch_up = asyncio.get_running_loop().create_task(catch_up(self))
            else:
                self.gap_again = True
            return
        gap = self.antenna.gap_round
        for stream in tuple(self._local.values()):
            stream.notify_gap(gap)

    def local_streams(self) -> list[Stream]:
        """The members that are streams of this process."""
        return list(self._local.values())

    @property
    def keeps_history(self) -> bool:
        """Whether this room keeps history (:meth:`xraptor.XRaptor.configure_rooms`)."""
        return self.antenna.history_of(self.broadcast_id) is not None

    # internals --------------------------------------------------------------------

    async def _listen(self) -> None:
        self.failure = None
        try:
            if self.last_position is None and self.keeps_history:
                await self._learn_starting_point()
            await self.antenna.listen(self.broadcast_id, self)
        except Exception as error:
            self._listening = False
            self.failure = error
            logger.exception("room %.64r could not subscribe", self.broadcast_id)
            return
        if self._closed:
            await self.antenna.unlisten(self.broadcast_id, self)

    async def _learn_starting_point(self) -> None:
        """Take where the room's history stands as the position it catches up from after
        an outage, as if it had delivered the newest message (when the antenna can tell:
        :meth:`~xraptor.Antenna.newest_position`).

        Read *before* subscribing: every message received live then has a greater
        position (none is mistaken for one delivered already), and a catch-up also
        delivers what was published between this read and the subscription, instead of
        missing it. A read that fails leaves the room as it was: it then catches up
        only once it delivered a message.
        """
        antenna = self.antenna
        if not antenna.can_tell_newest_position:
            return
        if antenna.state == "new":
            await antenna.start()
        try:
            newest = await antenna.newest_position(self.broadcast_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning(
                "room %.64r: reading where its history stands failed (it catches up after "
                "an outage only once it delivered a message): %r",
                self.broadcast_id,
                error,
            )
            return
        if newest is not None and self.last_position is None:
            self.last_position = self.opened_at = newest

    async def _forward(self, message: str) -> None:
        members = tuple(self._remote)
        results = await asyncio.gather(
            *(self.antenna.post(member, message) for member in members), return_exceptions=True
        )
        for member, result in zip(members, results, strict=True):
            if isinstance(result, Exception):
                logger.warning(
                    "room %.64r: forward to %.64r failed: %r", self.broadcast_id, member, result
                )

    def _ensure_prune(self) -> None:
        if self._prune_task is None or self._prune_task.done():
            self._prune_task = asyncio.get_running_loop().create_task(self._prune())

    async def _prune(self) -> None:
        while self._remote and not self._closed:
            await asyncio.sleep(_PRUNE_SECONDS)
            for member in tuple(self._remote):
                try:
                    alive = await self.antenna.is_alive(member)
                except Exception as error:
                    logger.warning("is_alive(%.64r) failed: %r", member, error)
                    continue
                if not alive:
                    self.remove_member(member)

    def _close(self) -> None:
        self._closed = True
        rooms = self._app.rooms
        if rooms.get(self.broadcast_id) is self:
            del rooms[self.broadcast_id]
        if self._prune_task is not None:
            self._prune_task.cancel()
            self._prune_task = None
        if self._catch_up is not None:
            self._catch_up.cancel()
            self._catch_up = None
            self.catching_up = None
        if self._listening:
            self._listening = False
            self._app.room_tasks.track(self.antenna.unlisten(self.broadcast_id, self))

    @classmethod
    def reset(cls) -> None:
        """Forget every room of the current app (tests)."""
        current_app().rooms.clear()
