"""The antenna conformance suite: every antenna, built-in or third-party, runs it unchanged.

Usage in a plugin's tests::

    import pytest
    from xraptor.testing import AntennaConformance, BackendFault


    class TestMyAntenna(AntennaConformance):
        @pytest.fixture
        def antenna_factory(self, my_server):
            return lambda: MyAntenna(url=my_server.url)

        @pytest.fixture
        def backend_fault(self, my_server):  # the fault tests skip without it
            return BackendFault(stop=my_server.kill, start=my_server.start)

        @pytest.fixture
        def antenna_resources(self, my_server):  # optional
            return lambda antenna: {"connections": ..., "subscriptions": ...}

:class:`AntennaConformance` says what each fixture means. Every test uses channel
names of its own (:class:`ChannelNames`), so runs sharing one backend never meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import pytest

from ..antenna import Antenna, AntennaError, AntennaUnavailable, Gap, Subscription
from ._pair import AntennaFactory, AntennaPair

_T = TypeVar("_T")


#: what an antenna holds at its backend, by name (``"connections"``, ``"subscriptions"``)
ResourceCounts = Mapping[str, int]
#: the ``antenna_resources`` fixture's value: counts for one antenna (may be async)
ResourceCounter = Callable[[Antenna], ResourceCounts | Awaitable[ResourceCounts]]


@dataclass(frozen=True)
class BackendFault:
    """How the fault tests take the backend away and bring it back (``backend_fault``).

    :param stop: make the backend unreachable so that the antennas' connections to it
        drop (stop or kill the server); may return an awaitable
    :param start: bring it back at the same address (messages sent meanwhile are
        lost); may return an awaitable

    A pause (SIGSTOP / SIGCONT) fits as well, for a driver that notices a frozen
    backend and reconnects (the tests expect the gap a reconnection reports).
    """

    stop: Callable[[], object]
    start: Callable[[], object]


class ChannelNames:
    """Channel names unique to one test: ``names("order")`` is ``names.prefix + "order"``.

    The prefix (``xrc``, 12 random hex digits, ``.``) is new for every test, so two
    runs of the suite sharing a backend (two CI jobs, two Python versions) never use
    the same channel.
    """

    def __init__(self) -> None:
        self.prefix = f"xrc{uuid.uuid4().hex[:12]}."

    def __call__(self, body: str) -> str:
        return self.prefix + body


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """:func:`eventually` for a plain (not async) condition."""

    async def check() -> bool:
        return condition()

    return await eventually(check, timeout)


async def _next(sub: Subscription, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(sub.__anext__(), timeout)


async def _nothing_within(sub: Subscription, seconds: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(sub.__anext__(), seconds)
    except TimeoutError:
        return True
    return False


class _Recorder:
    """A Listener that keeps what it is told, in order: messages, gap notices, the close."""

    def __init__(self) -> None:
        self.events: list[str | Gap] = []
        self.closed = 0

    def on_message(self, channel: str, message: str) -> None:
        self.events.append(message)

    def on_gap(self, channel: str) -> None:
        self.events.append(Gap(channel))

    def on_closed(self) -> None:
        self.closed += 1

    def received(self) -> bool:
        return bool(self.events)

    @property
    def messages(self) -> list[str]:
        return [event for event in self.events if isinstance(event, str)]

    @property
    def gaps(self) -> list[Gap]:
        return [event for event in self.events if isinstance(event, Gap)]


def _show(name: str) -> str:
    """A channel name in a failure message: its size and its start."""
    size = len(name.encode("utf-8", "surrogatepass"))
    shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}...{name[-12:]!r}"
    return f"channel {shown} ({len(name)} characters, {size} bytes of UTF-8)"


def _long_names(names: ChannelNames) -> list[str]:
    """Names around the usual backend limits (63-byte identifiers, 128, 256, ...) up to
    past 1 KiB, sharing one long prefix: a driver that truncates them mixes them up."""
    found: list[str] = []
    prefix = names.prefix
    for size in (63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025):
        stem = prefix + "x" * (size - len(prefix) - 1)
        found += [stem + "a", stem + "b", stem + "x"]
    # 1,024 characters of two, three and four bytes (up to 4 KiB); the 63rd byte
    # falls inside a character
    for char in ("\u00e9", "\u4e2d", "\U0001f996"):
        stem = prefix + char * (1024 - len(prefix) - 1)
        found += [stem + "a", stem + "b"]
    return found


#: bodies of names that differ by little: case, separators and wildcards of common
#: backends, quoting, whitespace and control characters, Unicode look-alikes
_LOOK_ALIKE = [
    "",
    "room",
    "Room",
    "ROOM",
    "room1",
    "room.1",
    "room..1",
    ".room",
    "room.",
    "*",
    ">",
    "#",
    "+",
    "?",
    "%",
    "_",
    "room.*",
    "room.>",
    "room.#",
    "room/1",
    "room/+",
    "room/#",
    "room:1",
    "room[1]",
    "room[!1]",
    "room{1,2}",
    "room\\1",
    "room|1",
    "room^1",
    "room$",
    "$room",
    "@room",
    "room'1",
    'room"1',
    "room`1",
    "room;1",
    "room -- 1",
    "room,1",
    "room=1&x=2",
    "room%201",
    "room+1",
    "room 1",
    " room",
    "room ",
    "room\t1",
    "room\n1",
    "room\r\n1",
    "room\x00",
    "room\x00x",
    "\x00",
    "room\x1b[0m",
    "room\x7f",
    "room\x85",
    "room\u00a0",
    "room\u2028",
    "room\u3000",
    "\u00e9",
    "e\u0301",
    "\ufb01",
    "fi",
    "\u00df",
    "ss",
    "\u0130",
    "i\u0307",
    "\u212a",
    "K",
    "\uff52\uff4f\uff4f\uff4d",
    "\u4e2d\u6587",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\u202eroom",
    "\ufeffroom",
    "ro\u200bom",
    "\U0001f996",
    "\U0001f469\u200d\U0001f4bb",
    "\U0001f469\U0001f4bb",
    "\ue000",
    "\uffff",
    "\U0010ffff",
]


async def _call(step: Callable[[], object]) -> None:
    result = step()
    if inspect.isawaitable(result):
        await result


async def _counts(counter: ResourceCounter, antenna: Antenna) -> dict[str, int]:
    result = counter(antenna)
    if inspect.isawaitable(result):
        result = await result
    counts = dict(result)
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"antenna_resources counted {key!r} as {value!r}, not an int")
    return counts


def _pending_tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if not task.done() and task is not current}


def _describe_tasks(tasks: set[asyncio.Task[object]]) -> str:
    return ", ".join(
        f"{task.get_name()} ({getattr(task.get_coro(), '__qualname__', '?')})" for task in tasks
    )


_NO_FAULT = (
    "no backend_fault fixture: the fault tests need a way to stop and start this "
    "antenna's backend (xraptor.testing.BackendFault). An antenna with a real backend "
    "must provide one; only a backend-less antenna (the memory antenna) goes without"
)
_NO_RESOURCES = (
    "no antenna_resources fixture: this test counts the connections and subscriptions "
    "an antenna holds at its backend (optional; provide it to check that close() and "
    "unsubscribing release them)"
)


class AntennaConformance(AntennaPair):
    """The contract. Subclass it in a ``Test...`` class and provide the fixtures:

    * ``antenna_factory`` (required): a callable making a new, unstarted antenna;
      two antennas from it behave like two processes sharing one backend.
    * ``backend_fault`` (required of an antenna with a real backend): a
      :class:`BackendFault` that stops the backend the factory's antennas use and
      starts it again. Without it the fault tests skip, saying why.
    * ``antenna_resources`` (optional): a callable taking an antenna and returning
      (or awaiting to) counts of what that antenna holds at its backend:
      ``"connections"`` (open connections) and/or ``"subscriptions"`` (backend
      subscriptions; any baseline a started antenna always holds is fine). After
      ``close()`` every count must reach 0, and after the last unsubscribe the
      subscriptions must be back to their count before subscribing. Counting at the
      backend (its client list) beats the driver's own bookkeeping.

    The class attributes below bound the waits; override them to fit a backend.
    """

    #: seconds a ``post()`` may take to raise :class:`~xraptor.AntennaUnavailable`
    #: while the backend is down
    unavailable_within: ClassVar[float] = 5.0
    #: seconds ``state`` may take to turn ``down`` once the backend is gone, and to
    #: be ``up`` again, watched channels resumed and the gap reported, once it is back
    recovery_within: ClassVar[float] = 10.0
    #: seconds a release may take to show after ``unsubscribe`` or ``close()``
    #: returned: another instance's ``is_alive``, the resource counts, the antenna's
    #: tasks ending
    release_within: ClassVar[float] = 5.0

    # ----- fixtures --------------------------------------------------------------

    @pytest.fixture
    def backend_fault(self) -> BackendFault | None:
        return None

    @pytest.fixture
    def antenna_resources(self) -> ResourceCounter | None:
        return None

    @pytest.fixture
    def channel_names(self) -> ChannelNames:
        return ChannelNames()

    @pytest.fixture
    def required_backend_fault(self, backend_fault: BackendFault | None) -> BackendFault:
        if backend_fault is None:
            pytest.skip(_NO_FAULT)
        return backend_fault

    @pytest.fixture
    def required_antenna_resources(
        self, antenna_resources: ResourceCounter | None
    ) -> ResourceCounter:
        if antenna_resources is None:
            pytest.skip(_NO_RESOURCES)
        return antenna_resources

    # ----- delivery --------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_names_itself(self, antenna: Antenna) -> None:
        assert isinstance(type(antenna).name, str) and type(antenna).name
        assert antenna.state == "up"

    @pytest.mark.asyncio
    async def test_delivers_in_order(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        channel = channel_names("order")
        async with antenna.subscribe(channel) as sub:
            for i in range(500):
                await other.post(channel, f"m{i}")
            received = [await _next(sub) for _ in range(500)]
        assert received == [f"m{i}" for i in range(500)]

    @pytest.mark.asyncio
    async def test_concurrent_posts_keep_call_order(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        """300 ``post()`` calls in flight at once reach subscribers in the order the calls
        were made (the order their tasks started), per channel, here on two channels
        at once, from another instance and from the subscriber's own. A driver that
        spreads publishes over a pool of connections must keep them in that order."""
        remote, local = channel_names("burst-remote"), channel_names("burst-local")
        async with antenna.subscribe(remote) as from_other, antenna.subscribe(local) as own:
            calls: list[asyncio.Future[None]] = []
            for i in range(300):
                calls.append(asyncio.ensure_future(other.post(remote, f"m{i}")))
                calls.append(asyncio.ensure_future(antenna.post(local, f"m{i}")))
            await asyncio.gather(*calls)
            for sub in (from_other, own):
                received = [await _next(sub, 10) for _ in range(300)]
                wrong = [(i, got) for i, got in enumerate(received) if got != f"m{i}"]
                assert not wrong, (
                    f"{_show(sub.channel)}: 300 concurrent posts arrived out of call order; "
                    f"first at position {wrong[0][0]}: {wrong[0][1]!r} "
                    f"({len(wrong)} out of place)"
                )

    @pytest.mark.asyncio
    async def test_several_subscribers_each_get_every_message(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        channel = channel_names("many")
        async with (
            antenna.subscribe(channel) as a1,
            antenna.subscribe(channel) as a2,
            other.subscribe(channel) as b1,
        ):
            for i in range(20):
                await antenna.post(channel, str(i))
            for sub in (a1, a2, b1):
                assert [await _next(sub) for _ in range(20)] == [str(i) for i in range(20)]
            await asyncio.sleep(0.2)  # a duplicate, if any, has arrived by now
            for sub in (a1, a2, b1):
                assert await _nothing_within(sub, 0.01)

    @pytest.mark.asyncio
    async def test_one_backend_subscription_per_channel(
        self, antenna: Antenna, channel_names: ChannelNames
    ) -> None:
        channel = channel_names("shared")
        async with antenna.subscribe(channel) as s1, antenna.subscribe(channel) as s2:
            assert antenna.watched_channels().count(channel) == 1
            await s1.aclose()
            assert antenna.watched_channels() == [channel]
            await antenna.post(channel, "still")
            assert await _next(s2) == "still"
        assert antenna.watched_channels() == []

    @pytest.mark.asyncio
    async def test_unsubscribe_stops_delivery_and_frees(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        gone, probe_channel = channel_names("gone"), channel_names("probe")
        sub = antenna.subscribe(gone)
        await sub.open()
        await other.post(gone, "before")
        assert await _next(sub) == "before"
        await sub.aclose()
        assert antenna.watched_channels() == []
        assert not antenna.is_listening(gone)
        async with antenna.subscribe(probe_channel) as probe:
            await other.post(gone, "after")
            await other.post(probe_channel, "marker")
            assert await _next(probe) == "marker"
        with pytest.raises(StopAsyncIteration):
            await _next(sub)

    @pytest.mark.asyncio
    async def test_unwatch_releases_the_backend_subscription(
        self,
        antenna: Antenna,
        other: Antenna,
        channel_names: ChannelNames,
        antenna_resources: ResourceCounter | None,
    ) -> None:
        """Once a channel's last local listener leaves, the backend no longer holds its
        subscription: another instance's ``is_alive`` says so, and so do the antenna's
        resource counts (with the ``antenna_resources`` fixture). Twice over, on
        channels left one at a time while the others stay held."""
        names = [channel_names(f"release-{i}") for i in range(3)]
        baseline = await self._subscriptions(antenna_resources, antenna)
        for _ in range(2):
            subs = [antenna.subscribe(name) for name in names]
            for sub in subs:
                await sub.open()
            for name in names:
                assert await eventually(_alive(other, name), self.release_within)
            if baseline is not None:
                during = await self._subscriptions(antenna_resources, antenna)
                assert during is not None and during > baseline, (
                    f"antenna_resources counts {during} subscriptions with {len(names)} "
                    f"channels watched, no more than before ({baseline}): "
                    "does it count this antenna's subscriptions?"
                )
            for left, sub in enumerate(subs, 1):
                await sub.aclose()
                assert sorted(antenna.watched_channels()) == sorted(names[left:])
                assert await eventually(_released(other, sub.channel), self.release_within), (
                    f"another instance still sees {_show(sub.channel)} alive "
                    f"{self.release_within:g} s after it was unsubscribed: unwatch() must "
                    "release the backend subscription"
                )
                for name in names[left:]:
                    assert await other.is_alive(name), f"{_show(name)} was released too"
            if baseline is not None:
                assert await eventually(
                    lambda: self._subscriptions_are(antenna_resources, antenna, baseline),
                    self.release_within,
                ), (
                    f"antenna_resources counts "
                    f"{await self._subscriptions(antenna_resources, antenna)} subscriptions "
                    f"after every channel was unsubscribed, {baseline} before: unwatch() "
                    "must release the backend subscription"
                )

    @pytest.mark.asyncio
    async def test_is_alive_before_during_after(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        alive, never = channel_names("alive"), channel_names("alive-not")
        assert await antenna.is_alive(alive) is False
        assert await other.is_alive(alive) is False
        async with antenna.subscribe(alive):
            assert await antenna.is_alive(alive) is True
            assert await eventually(_alive(other, alive), self.release_within)
            assert await other.is_alive(never) is False
        # this process unsubscribed and was told so: no waiting on its own view
        assert await antenna.is_alive(alive) is False
        assert await eventually(_released(other, alive), self.release_within)

    @pytest.mark.asyncio
    async def test_is_alive_starts_a_new_antenna(
        self, antenna_factory: AntennaFactory, channel_names: ChannelNames
    ) -> None:
        """``is_alive`` on an antenna not started yet starts it (as ``post`` does)."""
        antenna = antenna_factory()
        try:
            before = antenna.state
            assert await antenna.is_alive(channel_names("never-subscribed")) is False
            assert (before, antenna.state) == ("new", "up")
        finally:
            await antenna.close()

    # ----- channel names ---------------------------------------------------------

    @pytest.mark.asyncio
    async def test_many_channels_without_crosstalk(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        names = [channel_names(f"ch-{i}") for i in range(200)]
        subs = [antenna.subscribe(name) for name in names]
        for sub in subs:
            await sub.open()
        try:
            for name in names:
                await other.post(name, name)
            for name, sub in zip(names, subs, strict=True):
                assert await _next(sub) == name
            assert await _nothing_within(subs[0], 0.2)
        finally:
            for sub in subs:
                await sub.aclose()
        assert antenna.watched_channels() == []

    @pytest.mark.asyncio
    async def test_look_alike_channel_names_stay_apart(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        """Names of every character class (wildcards and separators of common backends,
        quotes, whitespace, control characters, NUL, case, Unicode look-alikes and
        normalization forms, astral characters) are distinct channels."""
        await self._names_stay_apart(antenna, other, [channel_names(body) for body in _LOOK_ALIKE])

    @pytest.mark.asyncio
    async def test_long_channel_names(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        """Names of 63 bytes to past 1 KiB (and 1,024 characters of up to four bytes)
        work and stay distinct: a backend's limit on names (e.g. 63-byte identifiers)
        is the driver's to hide, by hashing or encoding, never by truncating."""
        await self._names_stay_apart(antenna, other, _long_names(channel_names))

    async def _names_stay_apart(self, antenna: Antenna, other: Antenna, names: list[str]) -> None:
        assert len(set(names)) == len(names)
        recorders = {name: _Recorder() for name in names}
        try:
            for name, recorder in recorders.items():
                await _named(antenna.listen(name, recorder), f"subscribing to {_show(name)}")
            for name in names:
                assert await eventually(_alive(other, name), self.release_within), (
                    f"another instance does not see {_show(name)} alive"
                )
            for i, name in enumerate(names):
                await _named(other.post(name, f"#{i}"), f"posting to {_show(name)}")
            for name, recorder in recorders.items():
                assert await until(recorder.received, 5.0), f"nothing arrived on {_show(name)}"
            await asyncio.sleep(0.2)  # crosstalk, if any, has arrived by now
            for i, (name, recorder) in enumerate(recorders.items()):
                assert recorder.events == [f"#{i}"], (
                    f"{_show(name)} received {recorder.events[:4]}, expected only ['#{i}']: "
                    "distinct names must be distinct channels"
                )
        finally:
            for name, recorder in recorders.items():
                await antenna.unlisten(name, recorder)
        assert antenna.watched_channels() == []
        for name in names:
            assert await eventually(_released(other, name), self.release_within), (
                f"{_show(name)} is still alive after it was unsubscribed"
            )

    # ----- messages and arguments ------------------------------------------------

    @pytest.mark.asyncio
    async def test_large_and_non_ascii_messages(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        channel = channel_names("big")
        large = "x" * 512_000
        text = 'olá 🦖 — 中文 \u0000 "quoted" \\ end'
        async with antenna.subscribe(channel) as sub:
            await other.post(channel, large)
            await other.post(channel, text)
            assert await _next(sub, 10) == large
            assert await _next(sub) == text

    @pytest.mark.asyncio
    async def test_bad_arguments_are_refused(
        self, antenna: Antenna, channel_names: ChannelNames
    ) -> None:
        with pytest.raises(TypeError):
            await antenna.post(1, "x")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await antenna.post(channel_names("ch"), b"x")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await antenna.post("", "x")
        with pytest.raises(ValueError):
            await antenna.subscribe("").open()
        after_bad = channel_names("after-bad")
        async with antenna.subscribe(after_bad) as sub:
            await antenna.post(after_bad, "fine")
            assert await _next(sub) == "fine"

    @pytest.mark.asyncio
    async def test_concurrent_subscribe_and_unsubscribe(
        self, antenna: Antenna, other: Antenna, channel_names: ChannelNames
    ) -> None:
        names = [channel_names(f"churn-{i}") for i in range(3)]
        live: list[Subscription] = []
        rng = random.Random(5)

        async def churn() -> None:
            for _ in range(25):
                if live and rng.random() < 0.5:
                    await live.pop(rng.randrange(len(live))).aclose()
                else:
                    sub = antenna.subscribe(rng.choice(names))
                    live.append(sub)
                    await sub.open()

        await asyncio.gather(*(churn() for _ in range(4)))
        wanted = {sub.channel for sub in live}
        assert set(antenna.watched_channels()) == wanted
        for name in names:
            await other.post(name, f"to {name}")
        for sub in live:
            assert await _next(sub) == f"to {sub.channel}"
        await asyncio.sleep(0.1)  # a duplicate, if any, has arrived by now
        for sub in live:
            assert await _nothing_within(sub, 0.01)
        for sub in live:
            await sub.aclose()
        assert antenna.watched_channels() == []
        for name in names:
            assert await antenna.is_alive(name) is False

    # ----- close -----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_close_releases_everything(
        self, antenna_factory: AntennaFactory, other: Antenna, channel_names: ChannelNames
    ) -> None:
        """``close()`` ends every subscription (a listener's ``on_closed``, a
        Subscription's iteration), and another instance sees its channels released."""
        closing, listened = channel_names("closing"), channel_names("closing-listener")
        antenna = antenna_factory()
        await antenna.start()
        sub = antenna.subscribe(closing)
        await sub.open()
        recorder = _Recorder()
        await antenna.listen(listened, recorder)
        assert await eventually(_alive(other, closing), self.release_within)
        await antenna.close()
        assert antenna.state == "closed"
        assert antenna.watched_channels() == []
        assert recorder.closed == 1, "a listener's on_closed() is called once on close()"
        with pytest.raises(StopAsyncIteration):
            await _next(sub, 1)
        for name in (closing, listened):
            assert await eventually(_released(other, name), self.release_within)
        with pytest.raises(AntennaError):
            await antenna.start()
        with pytest.raises(AntennaError):
            await antenna.post(closing, "too late")
        await antenna.close()

    @pytest.mark.asyncio
    async def test_close_leaves_no_task_running(
        self, antenna_factory: AntennaFactory, channel_names: ChannelNames
    ) -> None:
        """Every task an antenna started (readers, publishers, reconnectors, probes) has
        ended once ``close()`` returned (within ``release_within``), whether its
        subscriptions were closed first or left open."""
        before = _pending_tasks()
        first, second = antenna_factory(), antenna_factory()
        try:
            await first.start()
            await second.start()
            channel, left_open = channel_names("tasks"), channel_names("tasks-left-open")
            async with first.subscribe(channel) as sub:
                await second.post(channel, "hello")
                assert await _next(sub) == "hello"
                assert await second.is_alive(channel)
            await first.subscribe(left_open).open()
            await second.post(left_open, "unread")
            assert await first.is_alive(channel_names("tasks-nobody")) is False
        finally:
            await first.close()
            await second.close()

        def ended() -> bool:
            return not (_pending_tasks() - before)

        assert await until(ended, self.release_within), (
            f"tasks still running {self.release_within:g} s after close(): "
            f"{_describe_tasks(_pending_tasks() - before)}"
        )

    @pytest.mark.asyncio
    async def test_close_releases_backend_resources(
        self,
        required_antenna_resources: ResourceCounter,
        antenna_factory: AntennaFactory,
        channel_names: ChannelNames,
    ) -> None:
        """What ``antenna_resources`` counts (connections, subscriptions) drops to 0
        once ``close()`` returned (within ``release_within``), subscriptions left open
        included."""
        counter = required_antenna_resources
        antenna = antenna_factory()
        try:
            await antenna.start()
            first, second = channel_names("resources-1"), channel_names("resources-2")
            await antenna.subscribe(first).open()
            async with antenna.subscribe(second) as sub:
                await antenna.post(second, "counted")
                assert await _next(sub) == "counted"
                during = await _counts(counter, antenna)
            assert during and any(during.values()), (
                f"antenna_resources counts {during} for a started antenna watching two "
                "channels: does it count this antenna's resources?"
            )
        finally:
            await antenna.close()

        async def released() -> bool:
            return not any((await _counts(counter, antenna)).values())

        assert await eventually(released, self.release_within), (
            f"{self.release_within:g} s after close(), antenna_resources still counts "
            f"{await _counts(counter, antenna)}: close() must release every connection "
            "and subscription"
        )

    @pytest.mark.asyncio
    async def test_optional_round_trip_check(self, antenna_factory: AntennaFactory) -> None:
        """An antenna that implements ``ping`` answers it and is probed while started, and
        ``close()`` ends the probe; one that does not is never probed."""
        antenna = antenna_factory()
        await antenna.start()
        try:
            if not antenna.can_ping:
                assert "round_trip_ms" not in antenna.describe()
                return
            await asyncio.wait_for(antenna.ping(), antenna.health_timeout)

            async def probed() -> bool:
                return antenna.describe()["round_trip_ms"] is not None

            assert await eventually(probed, antenna.health_interval + antenna.health_timeout)
            assert antenna.state == "up" and antenna.describe()["probe_failure"] is None
        finally:
            await antenna.close()
        probes = [task for task in asyncio.all_tasks() if "health probe" in task.get_name()]
        assert probes == []

    # ----- faults (with the backend_fault fixture) ----------------------------------

    @pytest.mark.asyncio
    async def test_fault_post_raises_unavailable_while_down(
        self, required_backend_fault: BackendFault, antenna: Antenna, channel_names: ChannelNames
    ) -> None:
        """While the backend is down, ``post()`` raises ``AntennaUnavailable`` within
        ``unavailable_within`` (no other error, no hang); ``is_alive`` answers or raises
        it as promptly. Right after the stop, before the driver noticed, a post may
        still go out (and be lost: at most once). Once the backend is back, posting
        works again."""
        channel = channel_names("outage")
        await antenna.post(channel, "before")
        async with self._outage(required_backend_fault):
            await self._fails_over(antenna.post(channel, "just stopped"), antenna, "post()", True)
            await self._reaches(antenna, "down")
            for i in range(3):
                await self._fails_over(antenna.post(channel, f"down {i}"), antenna, "post()")
            await self._fails_over(antenna.is_alive(channel), antenna, "is_alive()", True)
        await self._reaches(antenna, "up")
        await antenna.post(channel, "back")

    @pytest.mark.asyncio
    async def test_fault_state_goes_down_then_up(
        self, required_backend_fault: BackendFault, antenna: Antenna
    ) -> None:
        """``state`` turns ``down`` once the backend is gone, stays so while it is, and
        is ``up`` again once it is back: exactly up, down, up."""
        states = [antenna.state]

        def sample() -> None:
            if antenna.state != states[-1]:
                states.append(antenna.state)

        async def sampling() -> None:
            while True:
                sample()
                await asyncio.sleep(0.005)

        sampler = asyncio.ensure_future(sampling())
        try:
            async with self._outage(required_backend_fault):
                await self._reaches(antenna, "down")
                await asyncio.sleep(0.3)
                assert antenna.state == "down", "the backend is still away"
            await self._reaches(antenna, "up")
            assert antenna.describe()["state"] == "up"
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            sample()
        assert states == ["up", "down", "up"], (
            f"state went {' -> '.join(states)}; expected up -> down -> up"
        )

    @pytest.mark.asyncio
    async def test_fault_watched_channels_resume_with_a_gap(
        self,
        required_backend_fault: BackendFault,
        antenna: Antenna,
        other: Antenna,
        channel_names: ChannelNames,
    ) -> None:
        """After the backend came back, every watched channel delivers again with no new
        subscribe, and ``report_gap`` reached its listeners first: a Listener's
        ``on_gap`` and a :class:`~xraptor.Gap` in :meth:`Subscription.events`, before
        the first message after the outage."""
        listened, subscribed = (
            channel_names("resume-listener"),
            channel_names("resume-subscription"),
        )
        recorder = _Recorder()
        await antenna.listen(listened, recorder)
        events: list[str | Gap] = []
        async with antenna.subscribe(subscribed) as sub:
            collector = asyncio.ensure_future(_collect(sub, events))
            try:
                await other.post(listened, "before")
                await other.post(subscribed, "before")
                assert await until(lambda: recorder.events == ["before"], 5.0)
                assert await until(lambda: events == ["before"], 5.0)
                async with self._outage(required_backend_fault):
                    await self._reaches(antenna, "down")
                await self._reaches(antenna, "up")
                await self._reaches(other, "up")
                assert await until(lambda: bool(recorder.gaps), self.recovery_within), (
                    "the antenna is up again but reported no gap to the listener: after "
                    "resubscribing, a driver must call report_gap()"
                )
                assert await until(lambda: Gap(subscribed) in events, 1.0), (
                    "the gap did not reach the Subscription"
                )
                assert sorted(antenna.watched_channels()) == sorted([listened, subscribed])
                await self._resumes(other, listened, lambda: recorder.events)
                await self._resumes(other, subscribed, lambda: events)
                assert await eventually(_alive(other, listened), self.release_within)
            finally:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
        await antenna.unlisten(listened, recorder)
        for what, seen, channel in (
            ("the listener", recorder.events, listened),
            ("the Subscription", events, subscribed),
        ):
            _check_resumed(seen, what, channel)

    # ----- helpers ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _outage(self, fault: BackendFault) -> AsyncIterator[None]:
        await _call(fault.stop)
        try:
            yield
        finally:
            await _call(fault.start)

    async def _reaches(self, antenna: Antenna, state: str) -> None:
        reached = await until(lambda: antenna.state == state, self.recovery_within)
        assert reached, (
            f"state is {antenna.state!r}, not {state!r}, {self.recovery_within:g} s after the "
            f"backend {'stopped' if state == 'down' else 'came back'}: a driver keeps "
            "set_state() truthful"
        )

    async def _fails_over(
        self, call: Awaitable[object], antenna: Antenna, what: str, may_succeed: bool = False
    ) -> None:
        """``call`` raises AntennaUnavailable within ``unavailable_within`` (or returns,
        when ``may_succeed``)."""
        bound = self.unavailable_within
        started = time.monotonic()
        try:
            async with asyncio.timeout(bound + 1) as deadline:
                await call
        except AntennaUnavailable:
            elapsed = time.monotonic() - started
            assert elapsed <= bound, (
                f"{what} raised AntennaUnavailable after {elapsed:.2f} s, more than "
                f"unavailable_within ({bound:g} s)"
            )
            return
        except Exception as error:
            if isinstance(error, TimeoutError) and deadline.expired():
                pytest.fail(
                    f"{what} did not return within {bound + 1:g} s while the backend is "
                    f"down: it must raise xraptor.AntennaUnavailable within "
                    f"unavailable_within ({bound:g} s)"
                )
            pytest.fail(
                f"{what} raised {type(error).__name__}({error}) while the backend is down: "
                "a driver raises xraptor.AntennaUnavailable (chain the cause with 'from')"
            )
        if not may_succeed:
            pytest.fail(
                f"{what} returned while the backend is down (state {antenna.state!r}): it "
                "must raise xraptor.AntennaUnavailable"
            )

    async def _resumes(
        self, poster: Antenna, channel: str, seen: Callable[[], list[str | Gap]]
    ) -> None:
        """Post to ``channel`` until a message arrives (a backend may take a moment to
        route to a resubscription), within ``recovery_within``."""
        deadline = time.monotonic() + self.recovery_within
        attempt = 0
        while True:
            with contextlib.suppress(AntennaUnavailable):
                await poster.post(channel, f"after-{attempt}")
            attempt += 1

            def arrived() -> bool:
                return any(isinstance(e, str) and e.startswith("after-") for e in seen())

            if await until(arrived, 0.2):
                return
            assert time.monotonic() < deadline, (
                f"{_show(channel)} was watched before the outage and delivers nothing "
                f"{self.recovery_within:g} s after the backend came back: a driver "
                "resubscribes watched_channels() when it reconnects"
            )

    @staticmethod
    async def _subscriptions(counter: ResourceCounter | None, antenna: Antenna) -> int | None:
        if counter is None:
            return None
        return (await _counts(counter, antenna)).get("subscriptions")

    async def _subscriptions_are(
        self, counter: ResourceCounter | None, antenna: Antenna, expected: int
    ) -> bool:
        return await self._subscriptions(counter, antenna) == expected


async def _negated(check: Awaitable[bool]) -> bool:
    return not await check


def _alive(antenna: Antenna, channel: str) -> Callable[[], Awaitable[bool]]:
    """A condition for :func:`eventually`: ``antenna`` sees ``channel`` alive (an error
    fails the test, naming the channel)."""

    async def alive() -> bool:
        return await _named(antenna.is_alive(channel), f"is_alive({_show(channel)})")

    return alive


def _released(antenna: Antenna, channel: str) -> Callable[[], Awaitable[bool]]:
    """A condition for :func:`eventually`: ``antenna`` no longer sees ``channel`` alive."""
    return lambda: _negated(_alive(antenna, channel)())


async def _named(call: Awaitable[_T], what: str) -> _T:
    """Await ``call``; an error it raises fails the test, saying what was being done."""
    try:
        return await call
    except Exception as error:
        pytest.fail(f"{what} raised {type(error).__name__}: {error}")


async def _collect(sub: Subscription, into: list[str | Gap]) -> None:
    async for event in sub.events():
        into.append(event)


def _check_resumed(events: list[str | Gap], what: str, channel: str) -> None:
    """``events``: "before", then one gap notice or more, then "after-N" messages in order."""
    assert events[:1] == ["before"], f"{what} saw {events[:3]} before the outage"
    after = events[1:]
    first = next((i for i, event in enumerate(after) if isinstance(event, str)), len(after))
    assert first > 0 and all(event == Gap(channel) for event in after[:first]), (
        f"{what} saw {after[:3]} after the outage: the gap notice must come before the "
        "first message after it"
    )
    messages = [event for event in after if isinstance(event, str)]
    numbers = [int(message.removeprefix("after-")) for message in messages]
    assert numbers == sorted(set(numbers)), f"{what} saw {messages} after the outage"
