"""Recovery: a SUB with ``since`` receives what its rooms published after its positions.

The SUB's header carries ``"since": {"<room id>": "<epoch>:<offset>", ...}``. For each
room its handler joins, the room holds the member's live messages back from the
moment it joined (:meth:`~xraptor.Broadcast.add_member`); once the handler returned
and the rooms are subscribed, the history after the position is read and pushed, in
order, then the held-back messages that the history did not hold (by offset), and
from then on the room pushes to the member directly. No message is pushed twice and
none is missing between the history and the live messages: each message is in the
history before any process receives it.

When the history no longer reaches back to the position (trimmed, expired, another
epoch, a room without history), the stream receives one push with the header
``{"notice": "unrecovered", "room": "<room id>"}`` instead, then the live messages.

After a backend outage (the antenna reports a gap once it resubscribed), a room with
history catches up the same way (:func:`catch_up`): from the last position it delivered
in this process, it reads the history and delivers what followed to its members, then
the live messages it held back meanwhile that the history did not hold; when the history
no longer reaches back that far (a backend that lost it, trimming, expiry), its local
members get the ``unrecovered`` notice instead of the gap notice. The notice names the
room, so that the application reloads that room only, and it is the notice a
reconnecting client already handles.

A room that delivered nothing yet starts from where its history stood when it opened
(:meth:`~xraptor.Antenna.newest_position`, read before it subscribed; for an empty
history, offset 0 of the epoch its first message will have), so a quiet room catches up
like any other. Only where the antenna could not tell (it does not implement that
method, its backend did not answer, or it has no position for an empty history) does
a room that delivered nothing yet have no position, and get the notice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson

from .antenna import AntennaUnavailable
from .history import HistoryEntry, Position
from .protocol import ErrorCode, Request, RequestError, push_tail

if TYPE_CHECKING:
    from .antenna import Antenna
    from .broadcast import Broadcast
    from .connection import Stream

logger = logging.getLogger("xraptor.recovery")

#: the SUB header key carrying the positions to recover from
SINCE = "since"
#: messages a catch-up delivers before it lets the event loop write them out
_CATCH_UP_BATCH = 256

UNRECOVERED_PAYLOAD = (
    '{"code": "unrecovered", "message": "the room\'s history no longer reaches back to '
    'the position given in since; messages published meanwhile may have been missed"}'
)


OUTAGE_PAYLOAD = (
    '{"code": "unrecovered", "message": "the backend was unreachable and the room\'s '
    "history no longer reaches back to the last message delivered before; messages "
    'published meanwhile may have been missed"}'
)


def since_of(request: Request) -> dict[str, Position] | None:
    """The positions a SUB asks to recover from (header ``since``), ``None`` without.

    :raises RequestError: ``invalid_field`` when ``since`` is not an object of room
        ids to ``"<epoch>:<offset>"`` strings
    """
    since = request.header.get(SINCE)
    if since is None:
        return None
    if type(since) is not dict:
        raise RequestError.about(
            request,
            ErrorCode.INVALID_FIELD,
            'header "since" must be an object of room ids to positions '
            '("<epoch>:<offset>" strings, as pushes carry them)',
        )
    positions: dict[str, Position] = {}
    for room, text in since.items():
        try:
            positions[room] = Position.parse(text)
        except ValueError as error:
            raise RequestError.about(
                request, ErrorCode.INVALID_FIELD, f'header "since", room {room[:64]!r}: {error}'
            ) from None
    return positions


async def recover(stream: Stream, antenna: Antenna) -> None:
    """Push to ``stream`` what each room it joined published after its ``since``
    position (or the ``unrecovered`` notice), then let its live messages through.

    :raises AntennaUnavailable: the history could not be read (the SUB is refused)
    """
    since = stream.since
    if since is None:
        return
    try:
        for room in tuple(stream.rooms):
            after = since.get(room.broadcast_id)
            if after is not None:
                await _recover_room(stream, room, after, antenna)
    finally:
        stream.since = None
        for room in tuple(stream.rooms):
            room.held_back(stream.request_id)


async def _recover_room(stream: Stream, room: Broadcast, after: Position, antenna: Antenna) -> None:
    entries: list[HistoryEntry] | None = None
    if antenna.history_of(room.broadcast_id) is not None:
        try:
            entries = await antenna.read_history(room.broadcast_id, after)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise AntennaUnavailable(
                f"could not read the history of room {room.broadcast_id[:64]!r}: {error}"
            ) from error
    connection = stream.connection
    prefix = stream.prefix
    last = after
    if entries is None:
        connection.metrics.unrecovered_total += 1
        await _send(stream, prefix + push_tail(UNRECOVERED_PAYLOAD, _unrecovered_header(room)))
    else:
        connection.metrics.recoveries_total += 1
        for entry in entries:
            if not connection.is_open():
                return
            # awaited (room in the outgoing buffer), not pushed: a long history must not
            # make its own client a slow consumer; live messages wait in the room meanwhile
            await _send(
                stream, prefix + push_tail(entry.message, room.position_header(entry.position))
            )
            last = entry.position
        here = room.last_position
        if here is None or (
            here is room.opened_at and here.epoch == last.epoch and here.offset < last.offset
        ):
            # the room received nothing live yet, and receives everything after ``last``:
            # from there it catches up after an outage (xraptor.recovery.catch_up), not
            # from where its history stood when it opened (that would push this member
            # what it just recovered again)
            room.last_position = last
    held = room.held_back(stream.request_id)
    for entry in held or ():
        position = entry.position
        if position.epoch == last.epoch and position.offset <= last.offset:
            continue  # in the history already
        connection.push(prefix + push_tail(entry.message, room.position_header(position)))


async def _send(stream: Stream, frame: bytes) -> None:
    connection = stream.connection
    if not connection.write(frame):
        await connection.send(frame)
    connection.metrics.pushes_total += 1


def _unrecovered_header(room: Broadcast) -> bytes:
    return orjson.dumps({"notice": "unrecovered", "room": room.broadcast_id})


async def catch_up(room: Broadcast) -> None:
    """After a backend outage: deliver what ``room`` (a room with history) missed since
    the last position it delivered, then the live messages it held back meanwhile
    (:attr:`~xraptor.Broadcast.catching_up`), or push the ``unrecovered`` notice to its
    local members when the history no longer reaches back; then let live messages
    through. Started by :meth:`~xraptor.Broadcast.on_gap`; reads again when another gap
    came meanwhile.
    """
    try:
        recovered = await _deliver_missed(room)
    except Exception:  # whatever went wrong, the room must not hold messages back for ever
        logger.exception("room %.64r: catching up after an outage failed", room.broadcast_id)
        recovered = False
    streams = room.local_streams()
    for stream in streams:
        metrics = stream.connection.metrics
        if recovered:
            metrics.recoveries_total += 1
        else:
            metrics.unrecovered_total += 1
            stream.connection.push(
                stream.prefix + push_tail(OUTAGE_PAYLOAD, _unrecovered_header(room))
            )
    held, room.catching_up = room.catching_up or [], None
    last = room.last_position
    for entry in held:
        position = entry.position
        if last is not None and position.epoch == last.epoch and position.offset <= last.offset:
            continue  # delivered from the history already
        room.deliver_at(entry.message, position)


async def _deliver_missed(room: Broadcast) -> bool:
    """Deliver from the history what ``room`` missed after its last position, again
    while gaps keep coming; whether the history reached back (else nothing or only part
    of what was missed was delivered)."""
    while True:
        room.gap_again = False
        after = room.last_position
        entries: list[HistoryEntry] | None = None
        if after is not None:
            try:
                entries = await room.antenna.read_history(room.broadcast_id, after)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning(
                    "room %.64r: reading its history after an outage failed: %r",
                    room.broadcast_id,
                    error,
                )
        if entries is None:
            return False
        for count, entry in enumerate(entries, 1):
            room.deliver_at(entry.message, entry.position)
            if count % _CATCH_UP_BATCH == 0:
                await asyncio.sleep(0)  # let the transports write; live ones stay held
        if not room.gap_again:
            return True
