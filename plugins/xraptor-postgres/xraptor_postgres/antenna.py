"""The PostgreSQL antenna: pub/sub over ``LISTEN`` / ``NOTIFY`` with asyncpg.

A process holds two connections, however many channels it watches:

* the **listening** connection (:mod:`xraptor_postgres.listener`): ``LISTEN`` on each
  watched channel's identifier and a shared advisory lock per watched channel, which
  other processes see in ``pg_locks`` (``is_alive``); it reconnects on its own and
  reports the gap;
* the **publishing** connection (:mod:`xraptor_postgres.publisher`): one task sends the
  queued posts in call order, batched into one ``pg_notify`` statement, and answers
  ``is_alive`` from ``pg_locks``.

Channel names, payload sizes and NUL are hidden by :mod:`xraptor_postgres.frames`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg

from xraptor.antenna import Antenna, AntennaError, AntennaUnavailable, MessageTooLarge

from . import frames
from .config import Settings
from .listener import Listening
from .publisher import UNREACHABLE, Link, Publisher

if TYPE_CHECKING:
    Connection = asyncpg.Connection[Any]

_escape_channel = functools.lru_cache(maxsize=8192)(frames.escape)


class PostgresAntenna(Antenna):
    """Pub/sub over PostgreSQL ``LISTEN`` / ``NOTIFY`` (at most once, per-channel order).

    Options (keyword arguments, ``antenna_options``, or class-wide with :meth:`set_config`):

    :param url: a libpq URL, ``postgresql://user:password@host:5432/db?sslmode=require``
        (``postgres://`` too; asyncpg reads its query: ``sslmode``, ``sslrootcert``, ...);
        default ``postgresql://127.0.0.1:5432/postgres``
    :param ssl: ``sslmode`` (``disable`` ... ``verify-full``) or an :class:`ssl.SSLContext`;
        default: the URL's ``sslmode``, else asyncpg's (``prefer``)
    :param publish_timeout: seconds a post, ``is_alive`` or a ``LISTEN`` may take before
        :class:`~xraptor.AntennaUnavailable`; default 2.0
    :param connect_timeout: seconds one connection attempt may take; default 2.0
    :param reconnect_min_delay: first delay between reconnection attempts; default 0.05
    :param reconnect_max_delay: cap of the backoff between attempts; default 5.0
    :param channel_prefix: first part of every ``LISTEN`` identifier (apps sharing a
        database with different prefixes never meet); default ``"xraptor"``
    :param application_name: what ``pg_stat_activity`` shows for the connections;
        default ``"xraptor"``
    :param max_message_size: the largest message, in bytes of escaped UTF-8 (sent in
        chunks past 7999 bytes); default 1 MiB
    :param max_pending_publishes: posts that may wait for the server before new ones
        fail at once; default 10000
    :param max_pending_size: characters of posts that may wait for the server (a
        post that would go past it fails at once, unless none waits); default 64 MiB
    :param connect_options: more ``asyncpg.connect()`` keyword arguments (``password``,
        ``server_settings``, ...)
    :param health_timeout: seconds the health probe's ``SELECT 1`` may take; default 3.0
    :param health_interval: seconds between health probes; default 1.0
    """

    name: ClassVar[str] = "postgres"
    #: libpq's URL schemes
    schemes: ClassVar[tuple[str, ...]] = ("postgres", "postgresql")
    _config: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.settings = settings = Settings.from_options(self.options)
        self.url = settings.url
        self.prefix = settings.prefix
        self.publish_timeout = settings.publish_timeout
        self.max_message_size = settings.max_message_size
        self._link = Link(self._open, timeout=settings.publish_timeout, where=settings.where)
        self._publisher = Publisher(
            self._link,
            timeout=settings.publish_timeout,
            max_pending=settings.max_pending_publishes,
            max_pending_size=settings.max_pending_size,
        )
        self._listening = Listening(
            self,
            self._open,
            where=settings.where,
            timeout=settings.publish_timeout,
            max_message_size=settings.max_message_size,
            reconnect_min_delay=settings.reconnect_min_delay,
            reconnect_max_delay=settings.reconnect_max_delay,
        )
        self._names = functools.lru_cache(maxsize=8192)(self._names_of)

    @property
    def reconnects(self) -> int:
        """Reconnections of the listening connection since connect."""
        return self._listening.reconnects

    @property
    def connections(self) -> int:
        """Connections open now (listening, publishing)."""
        return self._listening.connections + self._link.connections

    def _names_of(self, channel: str) -> tuple[str, int]:
        return frames.identifier(self.prefix, channel), frames.lock_key(self.prefix, channel)

    async def _open(self) -> Connection:
        settings = self.settings
        options: dict[str, Any] = {
            "timeout": settings.connect_timeout,
            **settings.connect_options,
        }
        server_settings = dict(options.get("server_settings") or {})
        server_settings.setdefault("application_name", settings.application_name)
        options["server_settings"] = server_settings
        if settings.ssl is not None:
            options["ssl"] = settings.ssl
        async with asyncio.timeout(settings.connect_timeout + 0.5):
            connection: Connection = await asyncpg.connect(settings.url, **options)
        return connection

    # ----- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        try:
            await self._listening.connect()
        except UNREACHABLE as error:
            raise AntennaUnavailable(
                f"cannot connect to PostgreSQL at {self.settings.where}: "
                f"{type(error).__name__}: {error or 'no answer in time'}"
            ) from error
        except asyncpg.PostgresError as error:
            raise AntennaError(
                f"PostgreSQL at {self.settings.where} refused the connection: {error}"
            ) from error
        self._publisher.start()
        self.set_state("up")

    async def disconnect(self) -> None:
        await self._publisher.close()
        await self._listening.close()
        await self._link.close()

    # ----- driver ----------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        identifier, _ = self._names(channel)
        body = frames.body(_escape_channel(channel), message)
        size = frames.utf8_size(body)
        if size > self.max_message_size:
            raise MessageTooLarge(
                f"a message of {size} bytes (escaped, with its channel name) is over the "
                f"postgres antenna's max_message_size ({self.max_message_size} bytes)"
            )
        payloads = frames.frames(self._publisher.next_seq(), body)
        await self._publisher.publish([identifier] * len(payloads), payloads)

    async def watch(self, channel: str) -> None:
        identifier, key = self._names(channel)
        await self._listening.watch(channel, identifier, key)

    async def unwatch(self, channel: str) -> None:
        identifier, key = self._names(channel)
        await self._listening.unwatch(channel, identifier, key)

    async def is_alive(self, channel: str) -> bool:
        identifier, key = self._names(channel)
        if self._listening.watches(identifier, channel):
            return True
        return await self._publisher.is_alive(key)

    async def ping(self) -> None:
        """``SELECT 1`` on the listening connection (bounded by the caller)."""
        await self._listening.ping()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            url=self.settings.where,
            channel_prefix=self.prefix,
            reconnects=self.reconnects,
            pending_publishes=len(self._publisher),
            dropped_chunked_messages=self._listening.reassembler.dropped,
        )
        return info
