"""Room history: positions, and the per-room settings an app configures.

A room with history gives each message a **position**, ``<epoch>:<offset>``: the
offset grows with publication order within the room (not necessarily by one), and
the epoch changes whenever the room's history was lost, so that a position of an
old epoch is never taken for one of a new epoch. An antenna that declares the
history capability (:attr:`xraptor.Antenna.can_keep_history`) publishes a message
and appends it to the room's history in one step, and reads the history after a
position; :mod:`xraptor.recovery` uses that to serve a SUB's ``since``.

An app says which rooms keep history with :meth:`xraptor.XRaptor.configure_rooms`;
at start it hands its antenna a :class:`HistoryResolver`, which the antenna asks on
each ``post`` (one dict lookup per channel once it was asked about it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

#: the longest offset accepted in a position (digits); larger ones are malformed
_MAX_OFFSET_DIGITS = 20
#: the longest epoch accepted in a position (characters)
_MAX_EPOCH_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message stands in its room's history: ``str()`` gives ``"<epoch>:<offset>"``.

    Positions of one epoch compare by offset; positions of different epochs do not
    compare at all (the history they belonged to is gone).
    """

    epoch: str
    offset: int

    def __post_init__(self) -> None:
        epoch, offset = self.epoch, self.offset
        if not isinstance(epoch, str) or not epoch or ":" in epoch:
            raise ValueError(f"an epoch must be a non-empty str without ':', got {epoch!r}")
        if len(epoch) > _MAX_EPOCH_LENGTH:
            raise ValueError(f"an epoch must be at most {_MAX_EPOCH_LENGTH} characters long")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"an offset must be an int >= 0, got {offset!r}")

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: object) -> Position:
        """The position written ``"<epoch>:<offset>"``.

        :raises ValueError: ``text`` is not a str of that form
        """
        if not isinstance(text, str):
            raise ValueError(f'a position must be a string "<epoch>:<offset>", got {text!r:.64}')
        epoch, _, offset = text.rpartition(":")
        well_formed = (
            epoch
            and ":" not in epoch
            and len(epoch) <= _MAX_EPOCH_LENGTH
            and offset.isascii()
            and offset.isdigit()
            and len(offset) <= _MAX_OFFSET_DIGITS
        )
        if not well_formed:
            raise ValueError(
                f'a position must be "<epoch>:<offset>" (an epoch without ":", an offset '
                f"of digits), got {text!r:.80}"
            )
        return cls(epoch, int(offset))


class HistoryEntry(NamedTuple):
    """One message of a room's history and its position."""

    position: Position
    message: str


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history a room keeps: its ``size`` last messages, each for ``ttl``
    seconds (``None``: until trimmed by size)."""

    size: int
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """One :meth:`~xraptor.XRaptor.configure_rooms` call: the rooms whose id its
    ``pattern`` matches (``re.match``) and what they keep."""

    pattern: re.Pattern[str]
    history: HistoryPolicy | None
    presence: bool = False
    join_leave: bool = False


def room_settings(
    pattern: str,
    *,
    history_size: int = 0,
    history_ttl: float | None = None,
    presence: bool = False,
    join_leave: bool = False,
) -> RoomSettings:
    """Validate one :meth:`~xraptor.XRaptor.configure_rooms` call.

    :raises TypeError: a value of the wrong type
    :raises ValueError: an invalid pattern, a negative size, a ttl that is not a
        positive number of seconds, a ttl without a size, or ``join_leave`` without
        ``presence``
    """
    if not isinstance(pattern, str):
        raise TypeError(f"a room pattern must be a str (a regex), got {type(pattern).__name__}")
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"invalid room pattern {pattern!r}: {error}") from None
    if not isinstance(history_size, int) or isinstance(history_size, bool) or history_size < 0:
        raise ValueError(f"history_size must be an int >= 0, got {history_size!r}")
    if history_ttl is not None:
        number = isinstance(history_ttl, int | float) and not isinstance(history_ttl, bool)
        if not number or not history_ttl > 0:
            raise ValueError(
                f"history_ttl must be a positive number of seconds or None, got {history_ttl!r}"
            )
        if history_size == 0:
            raise ValueError("history_ttl needs a history_size > 0 (the rooms keep no history)")
    for name, wanted in (("presence", presence), ("join_leave", join_leave)):
        if not isinstance(wanted, bool):
            raise TypeError(f"{name} must be a bool, got {wanted!r}")
    if join_leave and not presence:
        raise ValueError("join_leave=True needs presence=True (the notices announce presence)")
    history = HistoryPolicy(history_size, history_ttl) if history_size else None
    return RoomSettings(compiled, history, presence, join_leave)


class HistoryResolver:
    """The history policy of a channel under some :class:`RoomSettings` (the last
    one whose pattern matches wins), remembered per channel.

    :param settings: in the order they were configured
    """

    #: channels remembered before the memo starts over (channels may be request ids)
    MEMO_SIZE = 4096

    def __init__(self, settings: Iterable[RoomSettings]) -> None:
        self._settings = tuple(reversed(tuple(settings)))
        self._memo: dict[str, HistoryPolicy | None] = {}

    def __call__(self, channel: str) -> HistoryPolicy | None:
        memo = self._memo
        try:
            return memo[channel]
        except KeyError:
            pass
        policy = None
        for settings in self._settings:
            if settings.pattern.match(channel):
                policy = settings.history
                break
        if len(memo) >= self.MEMO_SIZE:
            memo.clear()
        memo[channel] = policy
        return policy

    @property
    def keeps_history(self) -> bool:
        """Whether some room may keep history under these settings."""
        return any(settings.history is not None for settings in self._settings)
