"""The publishing connection: one task sends queued notifications in order, in batches.

Each ``post()`` is encoded into its frames (:mod:`xraptor_postgres.frames`) by its caller
and queued at once, so the queue holds the posts in the order of the calls; one task
sends what is queued as one statement, ``pg_notify`` over two arrays, in one
transaction, so per-channel order holds whatever the number of concurrent posts, and a
message's chunks commit together. Callers wait on a plain future with a deadline
(``publish_timeout``): a post whose caller gave up before it was sent is dropped, not
sent late.

The connection (:class:`Link`) is opened on first use and again after it was lost
(lazily, by the next batch, within the callers' deadline); ``is_alive`` queries share
it, taking turns with the batches (asyncpg runs one operation at a time per connection).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from xraptor.antenna import AntennaError, AntennaUnavailable
from xraptor.closing import fail_waiting, stop_tasks

from .frames import lock_fields

logger = logging.getLogger("xraptor_postgres")

T = TypeVar("T")
#: notifications (frames) per statement, at most
BATCH = 512
#: one statement notifies a batch, in array order
NOTIFY = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)"
#: a channel is alive when some session holds its advisory lock (in this database)
ALIVE = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid = $1::int8::oid AND objid = $2::int8::oid AND objsubid = 1)"
)
#: what a lost or unreachable server raises
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

Opener = Callable[[], Awaitable[asyncpg.Connection]]
#: one post: its frames' identifiers and payloads, its caller's future, its size (characters)
_Item = tuple[list[str], list[str], "asyncio.Future[None]", int]


class Link:
    """One connection, opened when first needed and again after it was lost; one user at
    a time.

    :param opener: opens a new connection
    :param where: how messages name the server
    """

    def __init__(self, opener: Opener, *, timeout: float, where: str) -> None:
        self._opener = opener
        self.timeout = timeout
        self.where = where
        self._connection: asyncpg.Connection | None = None
        self._turn = asyncio.Lock()

    @property
    def connections(self) -> int:
        """Open connections (0 or 1)."""
        connection = self._connection
        return int(connection is not None and not connection.is_closed())

    async def run(self, step: Callable[[asyncpg.Connection], Awaitable[T]], what: str) -> T:
        """``step(connection)`` on a live connection, within ``timeout`` (waiting for the
        connection's turn included).

        :raises AntennaUnavailable: the server could not be reached, or did not answer
            in time (the connection is then dropped: its state is unknown)
        :raises AntennaError: the server refused ``step``
        """
        try:
            async with asyncio.timeout(self.timeout):
                async with self._turn:
                    connection = self._connection
                    if connection is None or connection.is_closed():
                        self._connection = None
                        connection = self._connection = await self._opener()
                    try:
                        return await step(connection)
                    except BaseException as error:
                        if not isinstance(error, asyncpg.PostgresError) or isinstance(
                            error, UNREACHABLE
                        ):
                            # lost, cancelled or failed half-way: a new connection next time
                            self._connection = None
                            connection.terminate()
                        raise
        except UNREACHABLE as error:
            raise AntennaUnavailable(
                f"{what} failed: PostgreSQL at {self.where} is unreachable "
                f"({type(error).__name__}: {error or 'no answer in time'})"
            ) from error
        except asyncpg.PostgresError as error:
            raise AntennaError(f"{what}: PostgreSQL refused it: {error}") from error

    async def close(self) -> None:
        async with self._turn:
            connection, self._connection = self._connection, None
            if connection is not None:
                await close_connection(connection, self.timeout)


async def close_connection(connection: asyncpg.Connection, timeout: float) -> None:
    """Close ``connection`` politely within ``timeout``, else cut it."""
    if connection.is_closed():
        return
    try:
        await asyncio.wait_for(connection.close(), timeout)
    except Exception:
        connection.terminate()


class Publisher:
    """The publishes of one antenna, over ``link``."""

    def __init__(
        self, link: Link, *, timeout: float, max_pending: int, max_pending_size: int
    ) -> None:
        self.link = link
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_pending_size = max_pending_size
        self._outbox: deque[_Item] = deque()
        #: characters of the payloads waiting in the outbox
        self._pending_size = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Posts waiting to be sent."""
        return len(self._outbox)

    def next_seq(self) -> int:
        """A new message number (frames of equal messages stay distinct)."""
        return next(self._seq)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"xraptor-postgres publisher {self.link.where}"
        )

    async def close(self) -> None:
        """Stop the task; every waiting post fails with :class:`AntennaError`."""
        task, self._task = self._task, None
        await stop_tasks(task)
        self._pending_size = 0
        fail_waiting(
            (item[2] for item in self._outbox),
            lambda: AntennaError("the postgres antenna is closed"),
        )
        self._outbox.clear()

    async def publish(self, identifiers: list[str], payloads: list[str]) -> None:
        """Queue one message's frames and wait until PostgreSQL took them, at most
        ``timeout`` seconds.

        :raises AntennaUnavailable: PostgreSQL did not take them in time, or cannot be
            reached, or too many posts already wait
        """
        if self._task is None:
            raise AntennaError("the postgres antenna is not connected")
        size = sum(len(payload) for payload in payloads)
        if len(self._outbox) >= self.max_pending or (
            self._outbox and self._pending_size + size > self.max_pending_size
        ):
            raise AntennaUnavailable(
                f"{len(self._outbox)} posts ({self._pending_size} characters) already wait "
                f"for PostgreSQL ({self.link.where})"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((identifiers, payloads, future, size))
        self._pending_size += size
        if not self._wake.is_set():
            self._wake.set()
        try:
            async with asyncio.timeout(self.timeout):
                await future
        except TimeoutError:
            raise AntennaUnavailable(
                f"PostgreSQL did not take the post within {self.timeout} s ({self.link.where})"
            ) from None

    async def is_alive(self, key: int) -> bool:
        """Whether some session holds the advisory lock ``key`` in this database."""
        classid, objid = lock_fields(key)

        async def query(connection: asyncpg.Connection) -> bool:
            return bool(await connection.fetchval(ALIVE, classid, objid))

        return await self.link.run(query, "is_alive")

    async def _run(self) -> None:
        outbox = self._outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            while outbox:
                batch: list[_Item] = []
                frames = 0
                while outbox and (not batch or frames + len(outbox[0][0]) <= BATCH):
                    item = outbox.popleft()
                    self._pending_size -= item[3]
                    if not item[2].done():  # its caller gave up: do not send it late
                        batch.append(item)
                        frames += len(item[0])
                if batch:
                    await self._send(batch)

    async def _send(self, batch: list[_Item]) -> None:
        identifiers = [name for item in batch for name in item[0]]
        payloads = [payload for item in batch for payload in item[1]]

        async def notify(connection: asyncpg.Connection) -> Any:
            return await connection.execute(NOTIFY, identifiers, payloads)

        error: Exception | None = None
        try:
            await self.link.run(notify, "post")
        except AntennaError as failure:
            error = failure
        except Exception as failure:  # the task must live on for the next posts
            logger.exception("postgres antenna: unexpected error while posting")
            error = AntennaError(f"post failed: {type(failure).__name__}: {failure}")
        for item in batch:
            future = item[2]
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
