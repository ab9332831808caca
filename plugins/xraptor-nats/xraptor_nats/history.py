"""Room history on NATS JetStream: one stream per history policy, positions from
stream sequences, reads after a position.

A JetStream stream has one per-subject limit for all its subjects, so the rooms of
one :class:`~xraptor.history.HistoryPolicy` (``size`` messages, each for ``ttl``
seconds) share one stream, ``<base>_<size>_<ttl ms>`` (``<base>`` is the
``history_stream_prefix`` option; ``ttl ms`` is 0 without a ttl), created or
updated idempotently by whichever process needs it first:

* subjects ``P.h.<size>_<ttl ms>.*`` (``P`` the ``subject_prefix``; the last token
  is the room's token, :func:`~xraptor_nats.subjects.channel_token`);
* ``max_msgs_per_subject = size``, ``max_age = ttl``, discard old: each room keeps
  its last ``size`` messages, each at most ``ttl``; JetStream removes the oldest
  first, so when the message at a position is still stored, every later message
  of its room is too (what recovery relies on);
* **RePublish** from ``P.h.<size>_<ttl ms>.*`` to ``P.ch.<token>``: the server copies
  each stored message, after storing it, to the room's ordinary subject with the
  headers ``Nats-Stream``, ``Nats-Sequence`` and ``Nats-Last-Sequence`` (the previous
  sequence of the same room). So live messages of a history room reach watchers on
  the same core subscription as any channel, *with* their position, and no
  JetStream consumer per room is needed.

A position is ``<epoch>:<stream sequence>``: sequences grow with publication order
in the stream (not by one per room). The epoch is ``<size>-<ttl ms>-<tag>``, with
``tag`` drawn from the stream's creation time: a stream that was deleted or lost
and created again has another epoch, and the epoch names its stream, so any
process reads the history of a position without knowing the room's policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from xraptor.antenna import AntennaError
from xraptor.history import HistoryEntry, HistoryPolicy, Position

from .pull import read_stored
from .subjects import check_prefix

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

#: channels remembered with the stream this process published them to
PUBLISHED_MEMO = 4096
#: JetStream limits are int64 (``max_age`` in nanoseconds)
_INT64 = 2**63 - 1
_EPOCH = re.compile(r"^([0-9]+)-([0-9]+)-([0-9a-f]{8})$")
_STORAGE = {"file": StorageType.FILE, "memory": StorageType.MEMORY}


def ttl_ms(policy: HistoryPolicy) -> int:
    """The policy's ttl in whole milliseconds (at least 1), 0 without a ttl."""
    if policy.ttl is None:
        return 0
    return max(1, round(policy.ttl * 1000))


def check_policy(policy: HistoryPolicy) -> None:
    """:raises ValueError: a size or ttl JetStream cannot hold (int64 limits)"""
    if not 0 < policy.size <= _INT64:
        raise ValueError(f"history_size must be between 1 and {_INT64}, got {policy.size}")
    if ttl_ms(policy) * 1_000_000 > _INT64:
        raise ValueError(f"history_ttl {policy.ttl} s is longer than JetStream's max_age allows")


def default_stream_prefix(subject_prefix: str) -> str:
    """``XRAPTOR_H`` for the default subject prefix, else with a digest of the prefix,
    so that apps with different subject prefixes never share a stream."""
    if subject_prefix == "xraptor":
        return "XRAPTOR_H"
    digest = hashlib.sha256(subject_prefix.encode()).hexdigest()[:10].upper()
    return f"XRAPTOR_H_{digest}"


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """The antenna's history options (see the plugin README)."""

    stream_prefix: str
    storage: StorageType
    replicas: int

    @classmethod
    def from_options(cls, options: dict[str, Any], subject_prefix: str) -> HistoryOptions:
        """:raises ValueError: an invalid ``history_*`` option"""
        prefix = options.get("history_stream_prefix") or default_stream_prefix(subject_prefix)
        prefix = check_prefix(prefix, "history_stream_prefix")
        if "." in prefix or len(prefix) > 200:
            raise ValueError(
                "history_stream_prefix must be one token of letters, digits, '_' or '-' "
                f"(a stream name), at most 200 characters; got {prefix!r}"
            )
        storage = options.get("history_storage", "file")
        if not isinstance(storage, str) or storage not in _STORAGE:
            raise ValueError(f"history_storage must be 'file' or 'memory', got {storage!r}")
        replicas = options.get("history_replicas", 1)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ValueError(f"history_replicas must be an int from 1 to 5, got {replicas!r}")
        return cls(prefix, _STORAGE[storage], replicas)


@dataclass(frozen=True, slots=True)
class _Stream:
    """A history stream as this process knows it: its name and epoch."""

    name: str
    epoch: str


class JetStreamHistory:
    """The history streams of one antenna (one NATS connection).

    Stream epochs are cached; :meth:`forget` drops the cache (on a lost connection:
    the server may have lost its streams meanwhile), so the next use asks again.

    :param subject_prefix: the antenna's ``subject_prefix``
    :param timeout: seconds a JetStream request may take
    """

    def __init__(
        self, nc: Client, options: HistoryOptions, subject_prefix: str, timeout: float
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._options = options
        self._prefix = subject_prefix
        self._timeout = timeout
        self._streams: dict[str, _Stream] = {}  # by stream name
        #: channel -> the stream this process published it to last (a bounded memo)
        self._published: dict[str, str] = {}
        self._creating: dict[str, asyncio.Task[_Stream]] = {}

    # ----- names ----------------------------------------------------------------

    def stream_name(self, size: int, ttl: int) -> str:
        return f"{self._options.stream_prefix}_{size}_{ttl}"

    def subject(self, policy: HistoryPolicy, token: str) -> str:
        """The subject a history room's messages are published to (and stored under)."""
        return f"{self._prefix}.h.{policy.size}_{ttl_ms(policy)}.{token}"

    def subject_in(self, name: str, token: str) -> str | None:
        """The subject of the room of ``token`` in history stream ``name`` (``None``:
        not one of this antenna's streams)."""
        size_ttl = self._size_ttl(name)
        if size_ttl is None:
            return None
        return f"{self._prefix}.h.{size_ttl[0]}_{size_ttl[1]}.{token}"

    def forget(self) -> None:
        """Drop the cached epochs (the streams may have changed while disconnected)."""
        self._streams.clear()

    def forget_stream(self, name: str) -> None:
        """Drop stream ``name``'s cached epoch."""
        self._streams.pop(name, None)

    def stream_of(self, channel: str, policy: HistoryPolicy | None) -> str | None:
        """The stream of ``channel``'s history: its policy's, else the one this process
        last published it to, else ``None`` (unknown)."""
        if policy is not None:
            return self.stream_name(policy.size, ttl_ms(policy))
        return self._published.get(channel)

    # ----- streams --------------------------------------------------------------

    async def ensure(self, policy: HistoryPolicy) -> _Stream:
        """The stream of ``policy``, created (or updated to this configuration) when needed."""
        name = self.stream_name(policy.size, ttl_ms(policy))
        known = self._streams.get(name)
        if known is not None:
            return known
        task = self._creating.get(name)
        if task is None:  # one request per stream, however many publishes wait for it
            task = self._creating[name] = asyncio.ensure_future(self._create(name, policy))
            task.add_done_callback(lambda _: self._creating.pop(name, None))
        return await asyncio.shield(task)

    async def _create(self, name: str, policy: HistoryPolicy) -> _Stream:
        size, ttl = policy.size, ttl_ms(policy)
        kept = f"each for {ttl / 1000:g} s" if ttl else "until trimmed"
        subjects = f"{self._prefix}.h.{size}_{ttl}.*"
        config = StreamConfig(
            name=name,
            description=f"xraptor room history: the last {size} messages of each room, {kept}",
            subjects=[subjects],
            retention=RetentionPolicy.LIMITS,
            max_msgs_per_subject=size,
            max_age=ttl / 1000 if ttl else None,
            discard=DiscardPolicy.OLD,
            storage=self._options.storage,
            num_replicas=self._options.replicas,
            republish=RePublish(
                src=subjects,
                dest=f"{self._prefix}.ch.{{{{wildcard(1)}}}}",
            ),
        )
        try:
            info = await self._add(config)
        except nats.js.errors.BadRequestError as error:
            if error.err_code == 10065:
                raise AntennaError(
                    f"JetStream refused history stream {name}: another stream captures its "
                    f"subjects {subjects!r} (change that stream's subjects or the "
                    f"antenna's subject_prefix): {error}"
                ) from error
            if error.err_code != 10058:  # "stream name already in use" (another configuration)
                raise AntennaError(f"JetStream refused history stream {name}: {error}") from error
            try:
                info = await self._js.update_stream(config)
            except nats.js.errors.APIError as refused:
                raise AntennaError(
                    f"history stream {name} exists with another configuration that JetStream "
                    f"cannot change ({refused.description}); delete it or set another "
                    "history_stream_prefix"
                ) from refused
        if info.config.republish is None:  # a server that ignored the setting
            raise AntennaError(
                f"history stream {name} has no republish: room history needs nats-server "
                "2.9 or later (JetStream RePublish)"
            )
        stream = _Stream(name, _epoch(size, ttl, info))
        self._streams[name] = stream
        return stream

    async def _add(self, config: StreamConfig) -> StreamInfo:
        """Add the stream of ``config`` (the same configuration again is no change).

        Processes that add one stream at once may be told its subjects "overlap with an
        existing stream" (10065): the stream one of them is making, not yet known by
        its name. So that answer is taken as final only when it stays after the
        others had time to finish (then another stream does capture the subjects).
        """
        for pause in (0.05, 0.2, 0.5):
            try:
                return await self._js.add_stream(config)
            except nats.js.errors.BadRequestError as error:
                if error.err_code != 10065:
                    raise
            await asyncio.sleep(pause)
        return await self._js.add_stream(config)

    async def state(self, name: str) -> tuple[str, int] | None:
        """The epoch and last sequence of stream ``name`` now, ``None`` if it is not ours
        or not there."""
        size_ttl = self._size_ttl(name)
        if size_ttl is None:
            return None
        try:
            info = await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return None
        stream = self._streams[name] = _Stream(name, _epoch(*size_ttl, info))
        return stream.epoch, info.state.last_seq

    async def epoch_of(self, name: str) -> str | None:
        """The epoch of history stream ``name`` (cached), ``None`` if it is not ours or gone."""
        known = self._streams.get(name)
        if known is not None:
            return known.epoch
        state = await self.state(name)
        return None if state is None else state[0]

    def _size_ttl(self, name: str) -> tuple[int, int] | None:
        base, _, rest = name.partition(f"{self._options.stream_prefix}_")
        size, _, ttl = rest.partition("_")
        if base or not (size.isdigit() and ttl.isdigit()):
            return None
        return int(size), int(ttl)

    # ----- publishing -------------------------------------------------------------

    async def publish(
        self, channel: str, token: str, data: bytes, policy: HistoryPolicy
    ) -> Position:
        """Store ``data`` in the room's history (JetStream publish; the server then
        republishes it to the room's subject) and return its position."""
        stream = await self.ensure(policy)
        subject = self.subject(policy, token)
        if len(self._published) >= PUBLISHED_MEMO:
            self._published.clear()
        self._published[channel] = stream.name
        try:
            ack = await self._js.publish(subject, data, timeout=self._timeout)
        except nats.js.errors.NoStreamResponseError:
            # the stream is gone (deleted, or lost with a server's memory): make it again
            self._streams.pop(stream.name, None)
            stream = await self.ensure(policy)
            ack = await self._js.publish(subject, data, timeout=self._timeout)
        if ack.stream != stream.name:  # (no Nats-Expected-Stream header: stored with each)
            raise AntennaError(
                f"JetStream stored a history message in stream {ack.stream!r}, not in "
                f"{stream.name!r}: another stream captures the subjects {subject!r}; "
                "change its subjects or the antenna's subject_prefix"
            )
        return Position(stream.epoch, ack.seq)

    # ----- reading ----------------------------------------------------------------

    async def read(
        self, token: str, after: Position, policy: HistoryPolicy | None
    ) -> list[HistoryEntry] | None:
        """The room's messages after ``after`` when the message at ``after`` is still
        stored (``None`` otherwise), oldest first.

        :param policy: the room's policy when the app says it (a position of another
            policy's stream is then not recovered: the room moved to another stream)
        """
        parsed = _EPOCH.match(after.epoch)
        if parsed is None:
            return None
        size, ttl = int(parsed[1]), int(parsed[2])
        if policy is not None and (policy.size, ttl_ms(policy)) != (size, ttl):
            return None
        name = self.stream_name(size, ttl)
        try:
            info = await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return None
        epoch = _epoch(size, ttl, info)
        self._streams[name] = _Stream(name, epoch)
        state = info.state
        if epoch != after.epoch or not state.first_seq <= after.offset <= state.last_seq:
            return None
        subject = f"{self._prefix}.h.{size}_{ttl}.{token}"
        entries: list[HistoryEntry] | None = []
        if after.offset < state.last_seq:
            entries = await self.read_after(name, subject, after.offset, epoch)
        # Read first, check after: JetStream removes a room's oldest messages first, so
        # if the one at ``after`` is still stored now, nothing after it went missing
        # while the messages above were read.
        if entries is None or not await self.holds(name, after.offset, subject):
            return None
        return entries

    async def newest(self, token: str, policy: HistoryPolicy) -> Position | None:
        """The position of the room's newest stored message; ``None`` when it has none
        (or its stream is not there): a stream sequence that is not the room's could not
        be read after (the room's messages that JetStream removed since are not told
        apart from ones never published), so an empty history has no position here."""
        name = self.stream_name(policy.size, ttl_ms(policy))
        state = await self.state(name)
        if state is None or state[1] == 0:
            return None
        try:
            message = await self._js.get_last_msg(name, self.subject(policy, token))
        except nats.js.errors.NotFoundError:
            return None
        assert message.seq is not None
        return Position(state[0], message.seq)

    async def next_stored(self, name: str, subject: str, start: int) -> tuple[int, bytes] | None:
        """The sequence and data of the first message of ``subject`` from ``start`` on."""
        try:
            message = await self._js.get_msg(name, start, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return None
        assert message.seq is not None
        return message.seq, message.data or b""

    async def holds(self, name: str, seq: int, subject: str) -> bool:
        """Whether stream ``name`` stores a message of ``subject`` at ``seq``."""
        try:
            message = await self._js.get_msg(name, seq)
        except nats.js.errors.NotFoundError:
            return False
        return message.subject == subject

    async def read_after(
        self, name: str, subject: str, seq: int, epoch: str
    ) -> list[HistoryEntry] | None:
        """The messages of ``subject`` from ``seq + 1`` that the stream holds now (``None``
        if fewer came than it held): see :func:`~xraptor_nats.pull.read_stored`."""
        config = ConsumerConfig(
            filter_subject=subject,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=seq + 1,
        )
        return await read_stored(
            self._nc, self._js, name, config, lambda message: _entry(message, epoch), self._timeout
        )


def _entry(message: Msg, epoch: str) -> HistoryEntry:
    seq = message.metadata.sequence.stream
    return HistoryEntry(Position(epoch, seq), message.data.decode("utf-8", "surrogatepass"))


def _epoch(size: int, ttl: int, info: StreamInfo) -> str:
    created = info.created.isoformat() if info.created is not None else ""
    tag = hashlib.sha256(f"{info.config.name}@{created}".encode()).hexdigest()[:8]
    return f"{size}-{ttl}-{tag}"
