"""Local fan-out: one backend subscription per channel per process.

The hub belongs to an antenna. Every consumer of a channel in this process (a
stream, a room, a :class:`~xraptor.antenna.Subscription`) is a *listener*; the
backend is told to watch a channel when its first listener arrives and to stop
when its last one leaves. Messages are handed to listeners synchronously, with
no task or queue per listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .history import Position

logger = logging.getLogger("xraptor.hub")


class Listener(Protocol):
    """A local consumer of one channel (:meth:`xraptor.Antenna.listen`).

    Both methods are called synchronously, on the event loop, and must not block
    (a listener that needs to await queues the work). An exception they raise is
    logged and does not reach the antenna or the other listeners.

    A listener may also have ``on_closed()`` (no arguments): it is then called once
    when the antenna closes with the listener still added; no message follows it.
    It is optional, so it is not part of this protocol's required methods.
    """

    def on_message(self, channel: str, message: str) -> None:
        """Called once per message of ``channel``, in the channel's order."""

    def on_gap(self, channel: str) -> None:
        """Called when messages of ``channel`` may have been lost (the driver reported a
        gap with :meth:`xraptor.Antenna.report_gap`, e.g. after a reconnection): the
        messages after it are live again, those around it may be missing."""


class _Channel:
    __slots__ = ("listeners", "lock", "watched")

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.watched = False
        self.lock = asyncio.Lock()


class Hub:
    """The channel table of one antenna.

    :param watch: coroutine function that subscribes the backend to a channel
    :param unwatch: coroutine function that unsubscribes it
    """

    def __init__(
        self,
        watch: Callable[[str], Awaitable[None]],
        unwatch: Callable[[str], Awaitable[None]],
    ) -> None:
        self._watch = watch
        self._unwatch = unwatch
        self._channels: dict[str, _Channel] = {}
        #: changes with each reported gap, so a listener fed by several channels (a
        #: stream and its rooms) tells its client of one gap once
        self.gap_round = 0

    def channels(self) -> list[str]:
        """Channels the backend watches now."""
        return [name for name, entry in self._channels.items() if entry.watched]

    def has_listeners(self, channel: str) -> bool:
        entry = self._channels.get(channel)
        return entry is not None and bool(entry.listeners)

    def listener_count(self) -> int:
        return sum(len(entry.listeners) for entry in self._channels.values())

    async def add(self, channel: str, listener: Listener) -> None:
        """Add a listener; returns once the backend delivers the channel's messages."""
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel()
        if listener not in entry.listeners:
            entry.listeners.append(listener)
        if entry.watched and not entry.lock.locked():
            return
        try:
            async with entry.lock:
                if not entry.watched and listener in entry.listeners:
                    await self._watch(channel)
                    entry.watched = True
        except BaseException:
            self._drop(channel, entry, listener)
            raise

    async def remove(self, channel: str, listener: Listener) -> None:
        """Remove a listener; the backend stops watching when the last one leaves."""
        entry = self._channels.get(channel)
        if entry is None:
            return
        self._drop(channel, entry, listener)
        if entry.listeners:
            return
        async with entry.lock:
            if entry.listeners or not entry.watched:
                return
            try:
                await self._unwatch(channel)
            finally:
                entry.watched = False
                if not entry.listeners and self._channels.get(channel) is entry:
                    del self._channels[channel]

    def _drop(self, channel: str, entry: _Channel, listener: Listener) -> None:
        try:
            entry.listeners.remove(listener)
        except ValueError:
            return
        idle = not entry.listeners and not entry.watched and not entry.lock.locked()
        if idle and self._channels.get(channel) is entry:
            del self._channels[channel]

    def dispatch(self, channel: str, message: str) -> None:
        """Hand one message to every local listener of ``channel``."""
        entry = self._channels.get(channel)
        if entry is None:
            return
        listeners = entry.listeners
        if len(listeners) == 1:
            self._call(listeners[0], channel, message)
            return
        for listener in tuple(listeners):
            self._call(listener, channel, message)

    def dispatch_at(self, channel: str, message: str, position: Position) -> None:
        """Hand one message of a channel with history, and its position, to every local
        listener of ``channel``: to its ``on_message_at(channel, message, position)``
        when it has one (rooms do), else to its ``on_message``."""
        entry = self._channels.get(channel)
        if entry is None:
            return
        for listener in tuple(entry.listeners):
            at = getattr(listener, "on_message_at", None)
            try:
                if at is not None:
                    at(channel, message, position)
                else:
                    listener.on_message(channel, message)
            except Exception:
                logger.exception("listener of channel %.64r failed", channel)

    @staticmethod
    def _call(listener: Listener, channel: str, message: str) -> None:
        try:
            listener.on_message(channel, message)
        except Exception:
            logger.exception("listener of channel %.64r failed", channel)

    def gap(self, channels: Iterable[str]) -> None:
        """Tell the listeners of ``channels`` that messages may have been lost."""
        self.gap_round += 1
        for channel in channels:
            entry = self._channels.get(channel)
            if entry is None:
                continue
            for listener in tuple(entry.listeners):
                try:
                    listener.on_gap(channel)
                except Exception:
                    logger.exception("gap notice for channel %.64r failed", channel)

    def clear(self) -> None:
        """Forget every listener without talking to the backend (used on close).

        Listeners that have an ``on_closed()`` method are told.
        """
        entries = list(self._channels.values())
        self._channels.clear()
        for entry in entries:
            for listener in entry.listeners:
                closed = getattr(listener, "on_closed", None)
                if closed is not None:
                    closed()
