"""The antenna contract: the pub/sub bus that streams and rooms travel over.

An antenna promises, per channel, in-order and at-most-once delivery to every
process listening at the time of publication. A plugin author implements five
coroutines, the *driver* side:

* :meth:`Antenna.connect` / :meth:`Antenna.disconnect`: open and release the
  backend connection(s);
* :meth:`Antenna.publish`: send one message to a channel;
* :meth:`Antenna.watch` / :meth:`Antenna.unwatch`: start and stop receiving a
  channel (called at most once per channel per process: the hub does local
  fan-out), handing each received message to :meth:`Antenna.deliver`;
* :meth:`Antenna.is_alive`: whether any process listens to a channel now.

A driver that lost its backend and resubscribed calls :meth:`Antenna.report_gap`
so that clients learn messages may have been missed (every listener's ``on_gap``;
a :class:`Subscription` shows it as a :class:`Gap` in :meth:`Subscription.events`),
and keeps :attr:`state`
truthful with :meth:`Antenna.set_state`. A driver may also implement the
optional :meth:`Antenna.ping` (one round trip to the backend): the base class
then probes it in the background (:mod:`xraptor.probe`), so that a backend that
freezes without dropping the connection is reported ``down`` too. Everything
else (``post``, ``subscribe``, ``listen``, lifecycle) is provided here. The
suite in :mod:`xraptor.testing` states the contract as tests.

Optional capability, **history** (rooms that keep their last messages, so that a
client that was away can recover them; see :mod:`xraptor.history`): a driver that
implements both :meth:`Antenna.publish_with_history` and :meth:`Antenna.read_history`
declares it (:attr:`Antenna.can_keep_history`), and runs
:class:`xraptor.testing.HistoryConformance` besides the contract's suite. It may also
implement :meth:`Antenna.newest_position`, so that a room that delivered nothing yet
can catch up after an outage too.

Optional capability, **presence** (who is in a room, across every process; see
:mod:`xraptor.presence`): a driver that implements :meth:`Antenna.presence_set`,
:meth:`Antenna.presence_remove`, :meth:`Antenna.presence_list` and
:meth:`Antenna.presence_expire` declares it (:attr:`Antenna.can_keep_presence`), and
runs :class:`xraptor.testing.PresenceConformance`. A room's members are keys (unique
across processes) with an info (JSON text); each expires :attr:`Antenna.presence_ttl`
seconds after it was last set unless set again, so that the members of a process that
died without cleaning up disappear; live processes set their members again, and take
out the expired ones (to announce their leave), every third of that time.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from .history import HistoryEntry, HistoryPolicy, Position
from .hub import Hub, Listener
from .probe import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, Prober, seconds_option

State = Literal["new", "up", "down", "closed"]

#: seconds a presence member lives unless set again (antenna option ``presence_ttl``)
DEFAULT_PRESENCE_TTL = 30.0


class AntennaError(Exception):
    """Base class of antenna errors."""


class AntennaUnavailable(AntennaError):
    """The backend cannot be reached now; the operation was not carried out."""


class MessageTooLarge(AntennaError, ValueError):
    """The backend refuses messages this large (e.g. over NATS ``max_payload``)."""


class SubscriptionOverflow(AntennaError):
    """A :class:`Subscription` consumer fell too far behind and messages were dropped."""


class HistoryNotSupported(AntennaError):
    """The app configured rooms with history and its antenna cannot keep history."""


class PresenceNotSupported(AntennaError):
    """The app configured rooms with presence and its antenna cannot keep presence."""


class Antenna(ABC):
    """Base class of every antenna (built-in or from a plugin).

    :param options: backend options (``url``, timeouts, ...); merged over the
        class-wide ones given to :meth:`set_config`. Every antenna takes
        ``health_timeout`` (seconds a :meth:`ping` may wait for its answer before
        the antenna reports ``down``, default 3) and ``health_interval`` (seconds
        between probes, default 1); they matter only for antennas that implement
        :meth:`ping`. Antennas that keep presence take ``presence_ttl`` (seconds
        after which a member that was not set again disappears, default 30).
    :raises ValueError: when ``health_timeout``, ``health_interval`` or
        ``presence_ttl`` is not a positive number of seconds
    """

    #: the name applications select the antenna by, e.g. ``"redis"``
    name: ClassVar[str] = ""
    #: the URL schemes that select the antenna (``antenna="<scheme>://..."``), e.g.
    #: ``("postgres", "postgresql")``; a class that sets its own ``name`` but not
    #: ``schemes`` gets ``(name,)``, one that sets neither keeps its parent's
    schemes: ClassVar[tuple[str, ...]] = ()
    _config: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and "schemes" not in cls.__dict__:
            # the default follows the name, not the parent's schemes: a subclass that
            # renames itself must not claim its parent's URLs by accident
            cls.schemes = (cls.name,) if isinstance(cls.name, str) and cls.name else ()
        # ``is_alive`` is a driver method, yet applications call it too (0.4 did, on an
        # antenna it had not started): a driver's own ``is_alive`` is wrapped here so that
        # the first call starts the antenna, as ``post`` does, and drivers stay unchanged.
        driver = cls.__dict__.get("is_alive")
        if callable(driver) and not getattr(driver, "__isabstractmethod__", False):
            cls.is_alive = _starting_first(driver)  # type: ignore[method-assign,assignment]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        if getattr(cls, "__abstractmethods__", None) and hasattr(cls, "stop_listening"):
            raise TypeError(_MIGRATE_04.format(name=cls.__name__))
        return super().__new__(cls)

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = {**type(self)._config, **options}
        self._hub = Hub(self.watch, self.unwatch)
        self._state: State = "new"
        self._start_lock = asyncio.Lock()
        self.health_timeout = seconds_option(self.options, "health_timeout", DEFAULT_TIMEOUT)
        self.health_interval = seconds_option(self.options, "health_interval", DEFAULT_INTERVAL)
        #: seconds a presence member lives unless set again (see :meth:`presence_set`)
        self.presence_ttl = seconds_option(self.options, "presence_ttl", DEFAULT_PRESENCE_TTL)
        self._prober: Prober | None = None
        #: the history policy of each channel (set by the app at start, see
        #: :meth:`set_history`); ``None``: no channel keeps history, nothing is asked
        self._history: Callable[[str], HistoryPolicy | None] | None = None
        if self.can_ping:
            self._prober = Prober(
                self.ping,
                label=self.name or type(self).__name__,
                interval=self.health_interval,
                timeout=self.health_timeout,
            )

    # ----- driver side: what a plugin implements -------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Open the backend connection(s). Called once by :meth:`start`."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Release every backend resource. Called once by :meth:`close`."""

    @abstractmethod
    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to ``channel``.

        :raises AntennaUnavailable: when the backend cannot take it within the
            antenna's bounded timeout.
        """

    @abstractmethod
    async def watch(self, channel: str) -> None:
        """Start handing ``channel``'s messages to :meth:`deliver`.

        Must not return before a message published after it returns is sure to
        be delivered.
        """

    @abstractmethod
    async def unwatch(self, channel: str) -> None:
        """Stop receiving ``channel`` and free what watching it held."""

    @abstractmethod
    async def is_alive(self, channel: str) -> bool:
        """Whether some process (this one included) listens to ``channel`` now.

        Called on an antenna that has not started yet, it starts it first (the base
        class wraps every driver's ``is_alive`` to do so; drivers need not).
        """

    async def ping(self) -> None:
        """Optional: one round trip to the backend; return once it answered.

        An antenna that implements it is probed in the background while it is
        started: a ping that does not return within ``health_timeout`` (or raises)
        makes :attr:`state` ``down`` until a later one returns. It must be safe to
        cancel (the probe's timeout cancels it) and should travel the path that
        would stall first (e.g. the subscriber connection). Not implementing it
        is fine: the antenna is then as healthy as its driver reports.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement ping()")

    @property
    def can_ping(self) -> bool:
        """Whether this antenna implements :meth:`ping` (and so is probed)."""
        return type(self).ping is not Antenna.ping

    # ----- optional capability: history ------------------------------------------

    async def publish_with_history(
        self, channel: str, message: str, history: HistoryPolicy
    ) -> Position:
        """Optional (history): publish ``message`` and append it to ``channel``'s history,
        as one step; return its position.

        The message is in the history before any process receives it, and its offset
        is greater than that of every message published to the channel before it in
        the same epoch. The history keeps the channel's last ``history.size`` messages,
        each for ``history.ttl`` seconds (``None``: until trimmed). Every process
        watching the channel receives it with its position: drivers hand it to
        :meth:`deliver_at` (not :meth:`deliver`). A history that was lost (a backend
        restart, an expiry of the whole history) starts a new epoch.

        :raises AntennaUnavailable: when the backend cannot take it in time
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep history")

    async def read_history(self, channel: str, after: Position) -> list[HistoryEntry] | None:
        """Optional (history): the messages of ``channel`` published after ``after``,
        oldest first, with their positions, when the message at ``after`` is still in
        the history (so that none between is missing); ``None`` when it is not
        (trimmed, expired, another epoch, never there).

        :raises AntennaUnavailable: when the backend cannot answer in time
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep history")

    async def newest_position(self, channel: str) -> Position | None:
        """Optional (history): where ``channel``'s history stands now, so that a room
        opening in this process can later catch up from there (after a backend outage)
        even if it delivers nothing before.

        The position of the channel's newest message; when its history is empty, a
        position of offset 0 in the epoch its next message will belong to (the antenna
        draws that epoch now if it has none yet), after which :meth:`read_history`
        returns every message of the epoch while its first one is still kept. In both
        cases every message published after this returned has a greater position in
        the same epoch, or the history was lost (a new epoch). ``None``: the antenna
        cannot tell (the default, for antennas that do not implement it); the core then
        catches up only from the last message a room delivered.

        :raises AntennaUnavailable: when the backend cannot answer in time
        """
        return None

    @property
    def can_tell_newest_position(self) -> bool:
        """Whether this antenna implements :meth:`newest_position`."""
        return type(self).newest_position is not Antenna.newest_position

    @property
    def can_keep_history(self) -> bool:
        """Whether this antenna implements the history capability."""
        cls = type(self)
        return (
            cls.publish_with_history is not Antenna.publish_with_history
            and cls.read_history is not Antenna.read_history
        )

    def set_history(self, resolver: Callable[[str], HistoryPolicy | None] | None) -> None:
        """Say which channels keep history (the app does, at start): ``resolver(channel)``
        is the channel's :class:`~xraptor.history.HistoryPolicy`, or ``None`` for none.

        :raises HistoryNotSupported: a resolver for an antenna without the capability
        """
        if resolver is not None and not self.can_keep_history:
            raise HistoryNotSupported(
                f"the {self.name or type(self).__name__} antenna cannot keep room history "
                "(yet), and rooms were configured with history_size > 0; use an antenna "
                "that can (memory, redis), or configure the rooms without history"
            )
        self._history = resolver

    def history_of(self, channel: str) -> HistoryPolicy | None:
        """The history policy of ``channel`` (``None``: it keeps none)."""
        resolver = self._history
        return None if resolver is None else resolver(channel)

    # ----- optional capability: presence -----------------------------------------

    async def presence_set(self, room: str, members: Mapping[str, str]) -> None:
        """Optional (presence): add ``members`` (key -> info, JSON text) to ``room``'s
        presence, or set them again: each then lives :attr:`presence_ttl` seconds
        (read at each call) unless set again, and its info replaces the one it had.

        Keys are unique across processes (the core makes them so); every process sees
        the same members once this returned.

        :raises AntennaUnavailable: when the backend cannot take it in time
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep presence")

    async def presence_remove(self, room: str, members: Collection[str]) -> None:
        """Optional (presence): remove ``members`` (keys) from ``room``'s presence;
        unknown keys are ignored.

        :raises AntennaUnavailable: when the backend cannot take it in time
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep presence")

    async def presence_list(self, room: str) -> dict[str, str]:
        """Optional (presence): ``room``'s members (key -> info) that were set by any
        process, not removed, and set less than :attr:`presence_ttl` seconds ago
        (expired members are never listed, whether :meth:`presence_expire` took them
        out yet or not).

        :raises AntennaUnavailable: when the backend cannot answer in time
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep presence")

    async def presence_expire(self, room: str) -> dict[str, str]:
        """Optional (presence): take the members of ``room`` whose time to live passed
        out of it and return them (key -> info). Each expired member is returned by one
        call only, whichever process makes it, so that its leave is announced once;
        the live processes with members in the room call it every third of
        :attr:`presence_ttl`. (A backend may also forget expired members unreturned,
        e.g. when the whole room expired: nobody is left to tell then.)

        :raises AntennaUnavailable: when the backend cannot answer in time
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep presence")

    @property
    def can_keep_presence(self) -> bool:
        """Whether this antenna implements the presence capability."""
        cls = type(self)
        return (
            cls.presence_set is not Antenna.presence_set
            and cls.presence_remove is not Antenna.presence_remove
            and cls.presence_list is not Antenna.presence_list
            and cls.presence_expire is not Antenna.presence_expire
        )

    # ----- helpers for drivers -------------------------------------------------

    def deliver(self, channel: str, message: str) -> None:
        """Hand a received message to this process's listeners of ``channel``."""
        self._hub.dispatch(channel, message)

    def deliver_at(self, channel: str, message: str, position: Position) -> None:
        """Hand a received message of a channel with history, with its position, to
        this process's listeners of ``channel``."""
        self._hub.dispatch_at(channel, message, position)

    def report_gap(self, channels: Iterable[str] | None = None) -> None:
        """Tell listeners that messages on ``channels`` (default: all) may be lost."""
        self._hub.gap(self._hub.channels() if channels is None else channels)

    @property
    def gap_round(self) -> int:
        """A number that changes with each :meth:`report_gap`."""
        return self._hub.gap_round

    def watched_channels(self) -> list[str]:
        """The channels this process watches (what a driver resubscribes)."""
        return self._hub.channels()

    @property
    def state(self) -> State:
        """``new`` before start, ``up``, ``down`` while the backend is unreachable, ``closed``.

        ``down`` when the driver says so (:meth:`set_state`) or, for an antenna
        that implements :meth:`ping`, when the last probe got no answer in time.
        """
        prober = self._prober
        if self._state == "up" and prober is not None and prober.failure is not None:
            return "down"
        return self._state

    @property
    def connection_state(self) -> State:
        """The state the driver reported with :meth:`set_state`, without the probe's verdict."""
        return self._state

    def set_state(self, state: State) -> None:
        """Drivers report backend reachability here (drives ``/health``)."""
        changed = state != self._state
        self._state = state
        if changed and self._prober is not None:
            self._prober.connection_changed(state == "up")

    # ----- application side ----------------------------------------------------

    @classmethod
    def set_config(cls, config: dict[str, Any]) -> None:
        """Set class-wide default options (the xraptor 0.4 way of configuring)."""
        if not isinstance(config, dict):
            raise TypeError(f"{cls.__name__}.set_config expects a dict, got {type(config)!r}")
        cls._config = dict(config)

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """Options for an antenna selected by URL (``redis://...``); default ``{"url": url}``."""
        return {"url": url}

    async def start(self) -> None:
        """Connect, once. Safe to call again."""
        async with self._start_lock:
            if self._state in ("up", "down"):
                return
            if self._state == "closed":
                raise AntennaError(f"the {self.name or type(self).__name__} antenna is closed")
            await self.connect()
            if self._state == "new":
                self._state = "up"
            if self._prober is not None:
                self._prober.start(connected=self._state == "up")

    async def close(self) -> None:
        """Stop every listener and release the backend. Safe to call again."""
        if self._state == "closed":
            return
        self._hub.clear()
        if self._prober is not None:
            await self._prober.stop()
        try:
            if self._state != "new":
                await self.disconnect()
        finally:
            self._state = "closed"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def post(self, channel: str, message: str) -> None:
        """Publish ``message`` (a str) to ``channel``; a channel that keeps history (see
        :meth:`set_history`) also appends it there, with a position.

        :raises TypeError: on a non-str channel or message
        :raises ValueError: on an empty channel
        :raises AntennaUnavailable: when the backend is unreachable
        """
        _check_channel(channel)
        if not isinstance(message, str):
            raise TypeError(f"message must be str, got {type(message).__name__}")
        if self._state == "closed":
            raise AntennaError(f"the {self.name} antenna is closed")
        if self._state == "new":
            await self.start()
        history = self._history
        if history is not None:
            policy = history(channel)
            if policy is not None:
                await self.publish_with_history(channel, message, policy)
                return
        await self.publish(channel, message)

    async def listen(self, channel: str, listener: Listener) -> None:
        """Add a local listener; returns once the channel is being received.

        The listener (:class:`~xraptor.hub.Listener`) is told of each message
        (``on_message``), of each gap the driver reports (``on_gap``) and, if it has
        ``on_closed``, of the antenna's close.
        """
        _check_channel(channel)
        if self._state == "new":
            await self.start()
        await self._hub.add(channel, listener)

    async def unlisten(self, channel: str, listener: Listener) -> None:
        """Remove a local listener added with :meth:`listen`."""
        if self._state == "closed":
            return
        await self._hub.remove(channel, listener)

    def is_listening(self, channel: str) -> bool:
        """Whether this process has a listener on ``channel``."""
        return self._hub.has_listeners(channel)

    def subscribe(self, channel: str, *, max_pending: int = 10_000) -> Subscription:
        """An async iterator of the channel's messages.

        Use ``async with antenna.subscribe(ch) as sub: async for msg in sub`` to be
        sure the subscription is live before publishing; a plain ``async for``
        (the 0.4 way) subscribes on first iteration.
        """
        return Subscription(self, channel, max_pending)

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports about this antenna (and its probe's figures, if any)."""
        info: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "channels": len(self._hub.channels()),
        }
        if self._prober is not None:
            info.update(self._prober.describe())
        return info


_MIGRATE_04 = (
    "{name} looks like an xraptor 0.4 antenna (subscribe/stop_listening/post/is_alive); "
    "the antenna contract changed in 0.5 (connect/disconnect/publish/watch/unwatch/is_alive). "
    "See 'Migrating a 0.4 antenna' in the README."
)

_IsAlive = Callable[[Any, str], Awaitable[bool]]


def _starting_first(driver: _IsAlive) -> _IsAlive:
    """``driver`` (an ``is_alive``), starting the antenna first if it is still new."""
    if getattr(driver, "_xraptor_starts_first", False):
        return driver

    @functools.wraps(driver)
    async def is_alive(self: Antenna, channel: str) -> bool:
        # not while start() runs: a driver's connect() may call is_alive() itself
        if self._state == "new" and not self._start_lock.locked():
            await self.start()
        return await driver(self, channel)

    is_alive._xraptor_starts_first = True  # type: ignore[attr-defined]
    return is_alive


def _check_channel(channel: object) -> None:
    if not isinstance(channel, str):
        raise TypeError(f"channel must be str, got {type(channel).__name__}")
    if not channel:
        raise ValueError("channel must not be empty")


_END = object()


@dataclass(frozen=True, slots=True)
class Gap:
    """A gap notice in :meth:`Subscription.events`: messages of ``channel`` published
    around this point may have been lost (the backend was unreachable); the messages
    after it are live again."""

    channel: str


class Subscription:
    """One consumer's view of a channel: an async iterator and context manager.

    Iterating it yields the channel's messages; :meth:`events` yields them together
    with the gap notices (:class:`Gap`) in the order they came, and :attr:`gaps`
    counts the notices.
    """

    def __init__(self, antenna: Antenna, channel: str, max_pending: int) -> None:
        self.antenna = antenna
        self.channel = channel
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._max_pending = max_pending
        self._open = False
        self._closed = False
        self._overflowed = False
        #: gap notices received so far (see :meth:`events` for where they fell)
        self.gaps = 0

    # Listener protocol
    def on_message(self, channel: str, message: str) -> None:
        if self._queue.qsize() >= self._max_pending:
            self._overflowed = True
            return
        self._queue.put_nowait(message)

    def on_gap(self, channel: str) -> None:
        self.gaps += 1
        self._queue.put_nowait(Gap(channel))

    def on_closed(self) -> None:
        self._closed = True
        self._queue.put_nowait(_END)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called (or the antenna closed)."""
        return self._closed

    async def open(self) -> Self:
        if not self._open and not self._closed:
            await self.antenna.listen(self.channel, self)
            self._open = True
            if self.closed:  # aclose() ran while listen() was waiting for the backend
                await self.antenna.unlisten(self.channel, self)
        return self

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._open:
            await self.antenna.unlisten(self.channel, self)
        self._queue.put_nowait(_END)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        while True:
            item = await self._next_event()
            if isinstance(item, str):
                return item

    def events(self) -> AsyncIterator[str | Gap]:
        """The messages and the gap notices, in the order they came.

        ``async for event in sub.events()`` yields each message (a ``str``) and, where
        the antenna reported a gap, a :class:`Gap`: the consumer learns where messages
        may be missing (iterating the subscription itself skips the notices). Read a
        subscription one way or the other, not both at once. Cancelling a wait for
        the next event (a timeout) loses nothing.
        """
        return _Events(self)

    async def _next_event(self) -> str | Gap:
        if not self._open and not self._closed:
            await self.open()
        if self._overflowed:
            raise SubscriptionOverflow(
                f"subscription to {self.channel[:64]!r} fell more than "
                f"{self._max_pending} messages behind; messages were dropped"
            )
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        assert isinstance(item, str | Gap)
        return item


class _Events:
    """:meth:`Subscription.events`: a plain iterator object (not an async generator, so
    a timed-out ``__anext__`` leaves it usable)."""

    __slots__ = ("_subscription",)

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> str | Gap:
        return await self._subscription._next_event()
