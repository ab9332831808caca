"""A simulated backend, a correct antenna for it, and copies of that antenna each broken
in one way a real driver gets wrong (test_conformance_catches.py runs the conformance
suite against each: every broken copy must fail it, the correct one pass it).

The backend lives in the process but behaves like a server: antennas hold
connections to it, subscribe channels (or glob patterns) on a connection, and it can
be stopped (every connection drops, every subscription is forgotten, new
connections are refused) and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from typing import Any, ClassVar

import pytest

from xraptor import Antenna, AntennaUnavailable
from xraptor.testing import AntennaConformance, BackendFault, ResourceCounter

#: every channel an antenna of this module published to or watched (the harness
#: checks that two runs of the suite never use the same one)
CHANNELS_USED: set[str] = set()


class Backend:
    """A pub/sub server that a test can stop and start."""

    def __init__(self) -> None:
        self.running = True
        self.connections: set[Connection] = set()

    def connect(self, owner: Antenna) -> Connection:
        if not self.running:
            raise ConnectionRefusedError("the backend is stopped")
        connection = Connection(self, owner)
        self.connections.add(connection)
        return connection

    def stop(self) -> None:
        """Every connection drops and the server forgets their subscriptions."""
        self.running = False
        connections, self.connections = self.connections, set()
        for connection in connections:
            connection.drop()

    def start(self) -> None:
        self.running = True

    def route(self, key: str, message: str) -> None:
        for connection in tuple(self.connections):
            if key in connection.subscriptions:
                connection.receive(key, message)
            for pattern in tuple(connection.patterns):
                if fnmatchcase(key, pattern):
                    connection.receive(pattern, message)

    def listened(self, key: str) -> bool:
        return any(key in connection.announced for connection in self.connections)


class Connection:
    """One client connection: its subscriptions, and presence announcements (what
    ``is_alive`` reads, as a backend without subscriber counts would need)."""

    def __init__(self, backend: Backend, owner: Antenna) -> None:
        self.backend = backend
        self.owner = owner
        self.open = True
        self.lost = asyncio.Event()
        self.subscriptions: set[str] = set()
        self.patterns: set[str] = set()
        self.announced: set[str] = set()
        self.on_message: Callable[[str, str], None] | None = None

    def _check(self) -> None:
        if not self.open:
            raise ConnectionResetError("connection reset by peer")

    def publish(self, key: str, message: str) -> None:
        self._check()
        self.backend.route(key, message)

    def subscribe(self, key: str) -> None:
        self._check()
        self.subscriptions.add(key)

    def psubscribe(self, pattern: str) -> None:
        self._check()
        self.patterns.add(pattern)

    def unsubscribe(self, key: str) -> None:
        self._check()
        self.subscriptions.discard(key)
        self.patterns.discard(key)

    def announce(self, key: str) -> None:
        self._check()
        self.announced.add(key)

    def withdraw(self, key: str) -> None:
        self._check()
        self.announced.discard(key)

    def receive(self, key: str, message: str) -> None:
        if self.on_message is not None:
            self.on_message(key, message)

    def close(self) -> None:
        self.open = False
        self.backend.connections.discard(self)

    def drop(self) -> None:
        self.open = False
        self.subscriptions.clear()
        self.patterns.clear()
        self.announced.clear()
        self.lost.set()


class SimulatedAntenna(Antenna):
    """A correct antenna over :class:`Backend`: one connection, a supervisor task that
    reconnects, resubscribes, reports ``up`` and the gap."""

    name: ClassVar[str] = "simulated"
    #: seconds between reconnection attempts
    retry: ClassVar[float] = 0.02

    def __init__(self, backend: Backend, **options: Any) -> None:
        super().__init__(**options)
        self.backend = backend
        self._connection: Connection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        #: backend key -> the channels it carries
        self._routes: dict[str, set[str]] = {}

    # what the variants change -------------------------------------------------------

    def key(self, channel: str) -> str:
        """The backend's name for ``channel``."""
        CHANNELS_USED.add(channel)
        return channel

    def _subscribe(self, connection: Connection, key: str) -> None:
        connection.subscribe(key)
        connection.announce(key)

    def _unsubscribe(self, connection: Connection, key: str) -> None:
        connection.unsubscribe(key)
        connection.withdraw(key)

    def _resubscribe(self, connection: Connection) -> None:
        for key in self._routes:
            self._subscribe(connection, key)

    # the driver -------------------------------------------------------------------

    def _open(self) -> Connection:
        try:
            connection = self.backend.connect(self)
        except ConnectionRefusedError as error:
            raise AntennaUnavailable(f"cannot reach the backend: {error}") from error
        connection.on_message = self._received
        return connection

    def _live(self) -> Connection:
        connection = self._connection
        if connection is None or not connection.open:
            raise AntennaUnavailable("the backend is unreachable now")
        return connection

    async def connect(self) -> None:
        self._connection = self._open()
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="simulated antenna supervisor"
        )

    async def disconnect(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        self._routes.clear()

    async def _supervise(self) -> None:
        while True:
            connection = self._connection
            assert connection is not None
            await connection.lost.wait()
            self.set_state("down")
            while True:
                await asyncio.sleep(self.retry)
                with contextlib.suppress(AntennaUnavailable):
                    connection = self._open()
                    break
            self._connection = connection
            self._resubscribe(connection)
            self.set_state("up")
            self.report_gap(self.watched_channels())

    def _received(self, key: str, message: str) -> None:
        for channel in tuple(self._routes.get(key, ())):
            self.deliver(channel, message)

    async def publish(self, channel: str, message: str) -> None:
        key = self.key(channel)
        connection = self._live()
        try:
            connection.publish(key, message)
        except ConnectionError as error:
            raise AntennaUnavailable(f"publish failed: {error}") from error

    async def watch(self, channel: str) -> None:
        key = self.key(channel)
        connection = self._live()
        self._routes.setdefault(key, set()).add(channel)
        self._subscribe(connection, key)

    async def unwatch(self, channel: str) -> None:
        key = self.key(channel)
        channels = self._routes.get(key)
        if channels is None:
            return
        channels.discard(channel)
        if channels:
            return  # another channel still needs the key (only when keys collide)
        del self._routes[key]
        connection = self._connection
        if connection is not None and connection.open:
            self._unsubscribe(connection, key)

    async def is_alive(self, channel: str) -> bool:
        key = self.key(channel)
        self._live()
        return self.backend.listened(key)


# ----- the broken copies, one mistake each -----------------------------------------


class TruncatesLongNames(SimulatedAntenna):
    """Cuts names to 63 bytes, as PostgreSQL does to identifiers: long names collide."""

    def key(self, channel: str) -> str:
        return super().key(channel).encode()[:63].decode("utf-8", "ignore")


class RefusesLongNames(SimulatedAntenna):
    """Passes names to a backend that refuses those of 64 bytes or more."""

    def key(self, channel: str) -> str:
        key = super().key(channel)
        if len(key.encode()) >= 64:
            raise ValueError(f"identifier of {len(key.encode())} bytes is too long (max 63)")
        return key


class FoldsCase(SimulatedAntenna):
    """A case-insensitive backend: "Room" and "room" are one channel."""

    def key(self, channel: str) -> str:
        return super().key(channel).casefold()


class MangledNonAscii(SimulatedAntenna):
    """Sends names as ASCII, replacing what is not: "é" and "中" both become "?"."""

    def key(self, channel: str) -> str:
        return super().key(channel).encode("ascii", "replace").decode("ascii")


class DropsControlCharacters(SimulatedAntenna):
    """Strips what a text protocol cannot carry (NUL, CR LF, tab, ...) from names."""

    def key(self, channel: str) -> str:
        return "".join(char for char in super().key(channel) if char.isprintable())


class GlobSubscriptions(SimulatedAntenna):
    """Subscribes with pattern subscriptions (Redis PSUBSCRIBE): "room.*" matches others."""

    def _subscribe(self, connection: Connection, key: str) -> None:
        connection.psubscribe(key)
        connection.announce(key)


class ReordersThroughPool(SimulatedAntenna):
    """Publishes through a pool of four connections, each its own task: concurrent
    posts overtake each other."""

    def __init__(self, backend: Backend, **options: Any) -> None:
        super().__init__(backend, **options)
        self._queues: list[asyncio.Queue[tuple[str, str, asyncio.Future[None]]]] = []
        self._workers: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        await super().connect()
        self._queues = [asyncio.Queue() for _ in range(4)]
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(queue)) for queue in self._queues]

    async def disconnect(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await super().disconnect()

    async def _work(self, queue: asyncio.Queue[tuple[str, str, asyncio.Future[None]]]) -> None:
        while True:
            channel, message, done = await queue.get()
            await asyncio.sleep(random.uniform(0, 0.002))
            try:
                await SimulatedAntenna.publish(self, channel, message)
            except Exception as error:
                done.set_exception(error)
            else:
                done.set_result(None)

    async def publish(self, channel: str, message: str) -> None:
        done = asyncio.get_running_loop().create_future()
        random.choice(self._queues).put_nowait((channel, message, done))
        await done


class UnwatchKeepsSubscription(SimulatedAntenna):
    """``unwatch`` forgets the channel locally and never tells the backend."""

    def _unsubscribe(self, connection: Connection, key: str) -> None:
        pass


class UnwatchLeaksSubscription(SimulatedAntenna):
    """``unwatch`` withdraws the presence ``is_alive`` reads, but never unsubscribes:
    the backend keeps sending the channel (visible only in the resource counts)."""

    def _unsubscribe(self, connection: Connection, key: str) -> None:
        connection.withdraw(key)


class CloseLeaksTask(SimulatedAntenna):
    """``close()`` closes the connection but leaves the supervisor task running."""

    async def disconnect(self) -> None:
        self._supervisor = None
        await super().disconnect()


class CloseLeaksConnection(SimulatedAntenna):
    """Opens a second connection (say, for ``is_alive``) that ``close()`` forgets."""

    async def connect(self) -> None:
        await super().connect()
        self._spare = self.backend.connect(self)


class RawErrorWhileDown(SimulatedAntenna):
    """Lets the socket's ``ConnectionResetError`` (an OSError) out of ``publish``."""

    async def publish(self, channel: str, message: str) -> None:
        key = self.key(channel)
        assert self._connection is not None
        self._connection.publish(key, message)


class HangsWhileDown(SimulatedAntenna):
    """``publish`` waits for the backend to come back, however long that takes."""

    async def publish(self, channel: str, message: str) -> None:
        while self._connection is None or not self._connection.open:
            await asyncio.sleep(0.01)
        await super().publish(channel, message)


class HidesStateChanges(SimulatedAntenna):
    """Never reports ``down``: ``/health`` says fine while the backend is gone."""

    def set_state(self, state: Any) -> None:
        if state != "down":
            super().set_state(state)


class DropsGaps(SimulatedAntenna):
    """Reconnects and resubscribes, but never reports the gap."""

    def report_gap(self, channels: Any = None) -> None:
        pass


class NoResubscribe(SimulatedAntenna):
    """Reconnects and reports ``up`` and the gap, but never resubscribes."""

    def _resubscribe(self, connection: Connection) -> None:
        pass


#: variant name -> (antenna class, the conformance test that must catch it)
VARIANTS: dict[str, tuple[type[SimulatedAntenna], str]] = {
    "correct": (SimulatedAntenna, ""),
    "truncates_long_names": (TruncatesLongNames, "test_long_channel_names"),
    "refuses_long_names": (RefusesLongNames, "test_long_channel_names"),
    "folds_case": (FoldsCase, "test_look_alike_channel_names_stay_apart"),
    "mangles_non_ascii": (MangledNonAscii, "test_look_alike_channel_names_stay_apart"),
    "drops_control_characters": (
        DropsControlCharacters,
        "test_look_alike_channel_names_stay_apart",
    ),
    "glob_subscriptions": (GlobSubscriptions, "test_look_alike_channel_names_stay_apart"),
    "reorders_through_pool": (ReordersThroughPool, "test_concurrent_posts_keep_call_order"),
    "unwatch_keeps_subscription": (
        UnwatchKeepsSubscription,
        "test_unwatch_releases_the_backend_subscription",
    ),
    "unwatch_leaks_subscription": (
        UnwatchLeaksSubscription,
        "test_unwatch_releases_the_backend_subscription",
    ),
    "close_leaks_task": (CloseLeaksTask, "test_close_leaves_no_task_running"),
    "close_leaks_connection": (CloseLeaksConnection, "test_close_releases_backend_resources"),
    "raw_error_while_down": (RawErrorWhileDown, "test_fault_post_raises_unavailable_while_down"),
    "hangs_while_down": (HangsWhileDown, "test_fault_post_raises_unavailable_while_down"),
    "hides_state_changes": (HidesStateChanges, "test_fault_state_goes_down_then_up"),
    "drops_gaps": (DropsGaps, "test_fault_watched_channels_resume_with_a_gap"),
    "no_resubscribe": (NoResubscribe, "test_fault_watched_channels_resume_with_a_gap"),
}


class SimulatedConformance(AntennaConformance):
    """The suite, unchanged, on a fresh :class:`Backend` per test; subclasses set
    :attr:`antenna_class`. The bounds are tight: the backend is in the process."""

    antenna_class: ClassVar[type[SimulatedAntenna]] = SimulatedAntenna
    unavailable_within = 1.0
    recovery_within = 1.0
    release_within = 1.0

    @pytest.fixture
    def backend(self) -> Backend:
        return Backend()

    @pytest.fixture
    def antenna_factory(self, backend: Backend) -> Callable[[], Antenna]:
        return lambda: self.antenna_class(backend)

    @pytest.fixture
    def backend_fault(self, backend: Backend) -> Iterator[BackendFault]:
        yield BackendFault(stop=backend.stop, start=backend.start)
        backend.start()

    @pytest.fixture
    def antenna_resources(self, backend: Backend) -> ResourceCounter:
        def count(antenna: Antenna) -> dict[str, int]:
            mine = [c for c in backend.connections if c.owner is antenna]
            return {
                "connections": len(mine),
                "subscriptions": sum(len(c.subscriptions) + len(c.patterns) for c in mine),
            }

        return count
