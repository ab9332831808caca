"""The listening connection of a PostgreSQL antenna: ``LISTEN``, liveness locks, recovery.

One connection per antenna (per process) listens to every watched channel's identifier
and holds a shared advisory lock per watched channel (other processes read the locks
in ``pg_locks``: that is ``is_alive``). What should be held is the bookkeeping here
(identifier -> channels, lock key -> channels); what the current connection holds is
tracked apart, and each watch or unwatch brings the two together for its channel, one
operation at a time on the connection (asyncpg runs one at a time).

When the connection is lost (asyncpg's termination listener), the antenna turns
``down`` and a task reconnects with capped, jittered exponential backoff (it never
gives up), listens to every identifier and takes every lock again, then turns ``up``
and reports a gap on the watched channels. Notifications that arrive on the new
connection before the gap was reported are held back until it was, so that listeners
see the gap before the first message after the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg

from xraptor.antenna import Antenna, AntennaUnavailable

from .frames import Reassembler, parse_body
from .publisher import UNREACHABLE, close_connection

logger = logging.getLogger("xraptor_postgres")

_LOCK = "SELECT pg_try_advisory_lock_shared($1::int8)"
_UNLOCK = "SELECT pg_advisory_unlock_shared($1::int8)"
_LOCK_ALL = (
    "SELECT count(*) FILTER (WHERE pg_try_advisory_lock_shared(k)) FROM unnest($1::int8[]) AS u(k)"
)

Opener = Callable[[], Awaitable[asyncpg.Connection]]


class Listening:
    """The listening connection of ``antenna``, and the channels it should carry.

    :param opener: opens a new connection
    :param where: how messages name the server
    :param timeout: seconds one operation on the connection may take
    """

    def __init__(
        self,
        antenna: Antenna,
        opener: Opener,
        *,
        where: str,
        timeout: float,
        max_message_size: int,
        reconnect_min_delay: float,
        reconnect_max_delay: float,
    ) -> None:
        self._antenna = antenna
        self._opener = opener
        self.where = where
        self.timeout = timeout
        self.reconnect_min_delay = reconnect_min_delay
        self.reconnect_max_delay = reconnect_max_delay
        self._connection: asyncpg.Connection | None = None
        #: the connection being restored after a loss (its notifications are held back)
        self._restoring: asyncpg.Connection | None = None
        self._held: list[tuple[int, str, str]] = []
        self._turn = asyncio.Lock()
        #: what should be held: identifier -> its watched channels, lock key -> channels
        self._channels: dict[str, set[str]] = {}
        self._keys: dict[int, int] = {}
        #: what the current connection holds
        self._listening: set[str] = set()
        self._locked: set[int] = set()
        self.reassembler = Reassembler(max_message_size)
        self._reconnector: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._closing = False
        #: reconnections since connect (for tests and /health)
        self.reconnects = 0

    # ----- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        self._closing = False
        self._connection = await self._open()

    async def close(self) -> None:
        """Stop reconnecting and close the connection (the server then drops its
        ``LISTEN``\\ s and locks)."""
        self._closing = True
        task, self._reconnector = self._reconnector, None
        tasks = [*self._releases, *([task] if task is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection, self._connection = self._connection, None
        self._channels.clear()
        self._keys.clear()
        self._held.clear()
        if connection is not None:
            await close_connection(connection, self.timeout)

    @property
    def connections(self) -> int:
        connection = self._connection
        return int(connection is not None and not connection.is_closed())

    async def _open(self) -> asyncpg.Connection:
        connection = await self._opener()
        connection.add_termination_listener(self._on_terminated)
        return connection

    def _on_terminated(self, connection: object) -> None:
        if self._closing or connection is not self._connection:
            return
        logger.warning("postgres antenna: lost the listening connection to %s", self.where)
        self._connection = None
        self._listening.clear()
        self._locked.clear()
        self.reassembler.clear()
        self._antenna.set_state("down")
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.get_running_loop().create_task(
                self._reconnect(), name=f"xraptor-postgres reconnect {self.where}"
            )

    # ----- channels ------------------------------------------------------------

    def watches(self, identifier: str, channel: str) -> bool:
        return channel in self._channels.get(identifier, ())

    async def watch(self, channel: str, identifier: str, key: int) -> None:
        """Listen to ``identifier`` and take the lock ``key`` for ``channel``.

        :raises AntennaUnavailable: the connection is down, or the server did not answer
            within ``timeout``
        """
        if self._connection is None:
            raise AntennaUnavailable(
                f"the listening connection to PostgreSQL at {self.where} is down (reconnecting)"
            )
        self._channels.setdefault(identifier, set()).add(channel)
        self._keys[key] = self._keys.get(key, 0) + 1
        try:
            await self._settle(identifier, key)
        except BaseException:
            self._forget(channel, identifier, key)
            self._release_later(identifier, key)
            raise

    async def unwatch(self, channel: str, identifier: str, key: int) -> None:
        """Stop listening for ``channel``: its identifier and lock go once no other
        watched channel shares them. A failure drops the connection (which releases
        everything; the reconnection takes back the rest), so this does not raise."""
        self._forget(channel, identifier, key)
        try:
            await self._settle(identifier, key)
        except AntennaUnavailable:
            pass
        except BaseException:
            self._release_later(identifier, key)
            raise

    def _release_later(self, identifier: str, key: int) -> None:
        """A watch or unwatch was cancelled before its turn (a reconnection may have
        listened meanwhile): release what the connection holds and nothing wants, in
        a task of its own, so that other processes never see the channel alive."""
        stale = (identifier in self._listening and identifier not in self._channels) or (
            key in self._locked and key not in self._keys
        )
        if not stale or self._closing:
            return
        task = asyncio.get_running_loop().create_task(
            self._release(identifier, key), name="xraptor-postgres release"
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, identifier: str, key: int) -> None:
        with contextlib.suppress(AntennaUnavailable):
            await self._settle(identifier, key)

    def _forget(self, channel: str, identifier: str, key: int) -> None:
        channels = self._channels.get(identifier)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._channels[identifier]
        count = self._keys.get(key, 0) - 1
        if count > 0:
            self._keys[key] = count
        else:
            self._keys.pop(key, None)

    async def _settle(self, identifier: str, key: int) -> None:
        """Make the current connection hold ``identifier`` and ``key`` as the bookkeeping
        says. A failure or timeout drops the connection: its state is unknown."""
        async with self._turn:
            connection = self._connection
            if connection is None:
                raise AntennaUnavailable(
                    f"the listening connection to PostgreSQL at {self.where} was lost"
                )
            try:
                async with asyncio.timeout(self.timeout):
                    await self._settle_on(connection, identifier, key)
            except BaseException as error:
                connection.terminate()
                if isinstance(error, UNREACHABLE | asyncpg.PostgresError):
                    raise AntennaUnavailable(
                        f"LISTEN on PostgreSQL at {self.where} failed "
                        f"({type(error).__name__}: {error or 'no answer in time'})"
                    ) from error
                raise

    async def _settle_on(self, connection: asyncpg.Connection, identifier: str, key: int) -> None:
        wanted = identifier in self._channels
        if wanted and identifier not in self._listening:
            await connection.add_listener(identifier, self._on_notify)
            self._listening.add(identifier)
        elif not wanted and identifier in self._listening:
            self._listening.discard(identifier)
            await connection.remove_listener(identifier, self._on_notify)
        wanted = key in self._keys
        if wanted and key not in self._locked:
            if not await connection.fetchval(_LOCK, key):
                logger.warning(
                    "postgres antenna: advisory lock %d is held exclusively by another "
                    "session: other processes will not see this channel alive",
                    key,
                )
            self._locked.add(key)
        elif not wanted and key in self._locked:
            self._locked.discard(key)
            await connection.fetchval(_UNLOCK, key)

    # ----- notifications ---------------------------------------------------------

    def _on_notify(self, connection: object, pid: int, identifier: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        if connection is self._restoring:
            self._held.append((pid, identifier, payload))
            return
        if connection is not self._connection:
            return  # a connection left behind
        reassembler = self.reassembler
        dropped = reassembler.dropped
        try:
            body = reassembler.feed(pid, payload)
            if reassembler.dropped != dropped:
                logger.warning(
                    "postgres antenna: dropped a chunked message from session %d on %s (over "
                    "max_message_size, %d bytes, or broken off)",
                    pid,
                    identifier,
                    reassembler.max_size,
                )
            if body is None:
                return
            channel, message = parse_body(body)
        except ValueError as error:
            logger.warning(
                "postgres antenna: not an xraptor notification on %s (%s); was it sent by "
                "something else with the same channel prefix?",
                identifier,
                error,
            )
            return
        if channel in self._channels.get(identifier, ()):
            self._antenna.deliver(channel, message)

    async def ping(self) -> None:
        """``SELECT 1`` on the listening connection (its turn taken, like any operation)."""
        async with self._turn:
            connection = self._connection
            if connection is None:
                raise AntennaUnavailable(f"the listening connection to {self.where} is down")
            await connection.fetchval("SELECT 1")

    # ----- recovery --------------------------------------------------------------

    async def _reconnect(self) -> None:
        delay = self.reconnect_min_delay
        while not self._closing:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.reconnect_max_delay)
            try:
                connection = await self._open()
            except Exception as error:
                logger.info(
                    "postgres antenna: reconnecting to %s failed (%s: %s)",
                    self.where,
                    type(error).__name__,
                    error,
                )
                continue
            try:
                await self._restore(connection)
            except BaseException as error:
                connection.terminate()  # closing (cancelled) or failed: not left open
                if not isinstance(error, Exception):
                    raise
                logger.info("postgres antenna: restoring LISTEN failed: %s", error)
                continue
            self.reconnects += 1
            channels = self._antenna.watched_channels()
            logger.warning(
                "postgres antenna: reconnected to %s; messages may have been missed on %d channels",
                self.where,
                len(channels),
            )
            self._antenna.set_state("up")
            self._antenna.report_gap(channels)
            held, self._held = self._held, []
            for pid, identifier, payload in held:
                self._on_notify(connection, pid, identifier, payload)
            return

    async def _restore(self, connection: asyncpg.Connection) -> None:
        """Listen to every identifier and take every lock on ``connection``, then make it
        the current one."""
        async with self._turn:
            self._restoring = connection
            self._held = []
            try:
                async with asyncio.timeout(self.timeout + 0.01 * len(self._channels)):
                    for identifier in list(self._channels):
                        await connection.add_listener(identifier, self._on_notify)
                    keys = list(self._keys)
                    if keys:
                        await connection.fetchval(_LOCK_ALL, keys)
            finally:
                self._restoring = None
            if connection.is_closed():
                raise AntennaUnavailable("the connection was lost while restoring")
            self._listening = set(self._channels)
            self._locked = set(self._keys)
            self._connection = connection
