"""Live messages of history rooms: in order, with their positions.

A history stream republishes each message it stores to the room's subject with the
headers ``Nats-Stream``, ``Nats-Sequence`` and ``Nats-Last-Sequence`` (the sequence of
the room's message before it). The server does not keep republications of messages
that different connections published at the same moment in sequence order (rare:
measured on nats-server 2.9.10, two connections publishing as fast as they can swapped
0 to 2 of 4,000 messages), and a
message NATS dropped for this process (slow consumer) never comes. So each watched
channel is tracked:

* a message whose predecessor is the last one delivered (or older than the stream's
  last sequence when watching began) is delivered at once;
* one whose predecessor has not been delivered fills the hole first from the stream
  (the messages are stored before any republication: a round trip per missing message
  for the first few, then one batched read), then is delivered; copies that arrive
  later are dropped. After an outage of this process's connection the first message
  of a room fills what the stream stored meanwhile the same way;
* if the hole cannot be filled (trimmed meanwhile), the channel gets a gap notice and
  its listeners recover from the history.

Only republications pay for this; channels without history are untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xraptor.history import HistoryEntry, HistoryPolicy, Position

from .errors import LOCATE_FAILURES
from .subjects import channel_token

if TYPE_CHECKING:
    from xraptor.antenna import Antenna

    from .history import JetStreamHistory

logger = logging.getLogger("xraptor_nats")

SEQUENCE_HEADER = "Nats-Sequence"
LAST_SEQUENCE_HEADER = "Nats-Last-Sequence"
STREAM_HEADER = "Nats-Stream"

#: missing messages read one by one before a hole is read in batches
_ONE_BY_ONE = 8
#: sequences filled ahead of their republication that are remembered (to drop the copy)
_FILLED_MAX = 10_000


@dataclass(slots=True)
class _Track:
    """What was delivered of one channel's history stream."""

    stream: str
    epoch: str | None
    #: the stream's last sequence when watching began: older messages are not expected
    floor: int
    #: the last sequence delivered (``floor`` before the first)
    last: int
    filled: set[int] = field(default_factory=set)


class Republished:
    """The order and positions of republished messages, per watched channel.

    :param antenna: what the messages are delivered to
    """

    def __init__(self, history: JetStreamHistory, antenna: Antenna) -> None:
        self._history = history
        self._antenna = antenna
        self._tracks: dict[str, _Track] = {}
        #: republications that came before a message they follow (holes filled)
        self.overtakes = 0

    async def watching(self, channel: str, policy: HistoryPolicy | None) -> None:
        """Note where ``channel``'s stream stands before it is subscribed (when its
        stream is known: the app's policy, or this process published to it)."""
        stream = self._history.stream_of(channel, policy)
        if stream is None:
            return
        state = await self._history.state(stream)
        if state is None:  # no stream yet: every message of it is new
            self._tracks[channel] = _Track(stream, None, 0, 0)
        else:
            epoch, last_seq = state
            self._tracks[channel] = _Track(stream, epoch, last_seq, last_seq)

    def stop(self, channel: str) -> None:
        self._tracks.pop(channel, None)

    async def deliver(self, channel: str, data: bytes, headers: dict[str, str]) -> None:
        """Deliver a republication (and any message it overtook) to the antenna's
        listeners of ``channel``, with positions, in the stream's order."""
        antenna = self._antenna
        try:
            entries, gap = await self.receive(channel, data, headers)
        except LOCATE_FAILURES as error:
            logger.warning("no position for a message of %.64r: %s", channel, error)
            entries, gap = None, False
        if gap:  # a message of the room did not reach this process: listeners recover it
            antenna.report_gap([channel])
        if entries is None:  # not from a stream of ours: a message like any other
            antenna.deliver(channel, data.decode("utf-8", "surrogatepass"))
            return
        for position, text in entries:
            antenna.deliver_at(channel, text, position)

    async def receive(
        self, channel: str, data: bytes, headers: dict[str, str]
    ) -> tuple[list[HistoryEntry] | None, bool]:
        """The messages to deliver for one republication, oldest first, with their
        positions (``None``: not from a history stream of ours, a plain message), and
        whether some could not be recovered (a gap).

        :raises ValueError: malformed headers
        """
        stream = headers[STREAM_HEADER]
        seq = int(headers[SEQUENCE_HEADER])
        epoch = await self._history.epoch_of(stream)
        if epoch is None:
            return None, False
        track = self._tracks.get(channel)
        if track is None or track.stream != stream or track.epoch not in (None, epoch):
            # the first message of the channel (or the stream is another one now)
            self._tracks[channel] = _Track(stream, epoch, seq, seq)
            return [_entry(epoch, seq, data)], False
        track.epoch = epoch
        if seq <= track.last:
            if seq <= track.floor or seq in track.filled:
                track.filled.discard(seq)
                return [], False  # published before watching began, or delivered already
            # not expected: maybe the stream was made anew (new epoch) without this
            # process losing its connection; ask once more
            self._history.forget_stream(stream)
            if await self._history.epoch_of(stream) != epoch:
                self._tracks.pop(channel, None)
                return await self.receive(channel, data, headers)
            return [], False
        last = int(headers.get(LAST_SEQUENCE_HEADER, "0"))
        if last == track.last or (last <= track.floor and track.last == track.floor):
            track.last = seq
            return [_entry(epoch, seq, data)], False
        return await self._fill(channel, track, epoch, seq, last, data)

    async def _fill(
        self, channel: str, track: _Track, epoch: str, seq: int, last: int, data: bytes
    ) -> tuple[list[HistoryEntry], bool]:
        """Deliver the stored messages between the last delivered one and ``seq``, then it."""
        self.overtakes += 1
        subject = self._history.subject_in(track.stream, channel_token(channel))
        if subject is None:  # (not reached: epoch_of knew the stream as ours)
            raise ValueError(f"{track.stream!r} is not a history stream of this antenna")
        entries: list[HistoryEntry] = []
        cursor = track.last
        reached = track.last == last
        for _ in range(_ONE_BY_ONE):  # an overtaken message or two: direct reads
            if reached:
                break
            stored = await self._history.next_stored(track.stream, subject, cursor + 1)
            if stored is None or stored[0] >= seq:
                break
            cursor = stored[0]
            entries.append(_entry(epoch, cursor, stored[1]))
            reached = cursor == last
        else:
            if not reached:  # a longer hole (an outage of this connection): a batched read
                rest = await self._history.read_after(track.stream, subject, cursor, epoch)
                for entry in rest or ():
                    if entry.position.offset >= seq:
                        break
                    entries.append(entry)
                    reached = entry.position.offset == last
        # the room's oldest messages go first: if the last one delivered is still stored,
        # nothing between it and ``last`` was trimmed before it could be read
        exact = track.last != track.floor
        complete = reached and (
            not exact or await self._history.holds(track.stream, track.last, subject)
        )
        if len(track.filled) > _FILLED_MAX:
            track.filled.clear()
        track.filled.update(entry.position.offset for entry in entries)
        entries.append(_entry(epoch, seq, data))
        track.last = seq
        return entries, not complete


def _entry(epoch: str, seq: int, data: bytes) -> HistoryEntry:
    return HistoryEntry(Position(epoch, seq), data.decode("utf-8", "surrogatepass"))
