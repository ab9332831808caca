"""The Redis antenna: every subscription of the process on one Redis connection.

Layout of the connections a process holds (however many channels it watches):

* one subscriber connection, a redis-py :class:`~redis.asyncio.client.PubSub`
  read by a single reader task that hands each message to :meth:`Antenna.deliver`;
* a small bounded pool (``pool_size``, default 4) for ``PUBLISH`` and
  ``PUBSUB NUMSUB``. Publishes go through one publisher task that pipelines
  whatever is queued, in order, so per-channel order holds and many concurrent
  publishes cost few round trips.

Faults: when the subscriber connection drops (Redis restarted, ``CLIENT KILL``,
network), the reader reports ``down``, reconnects with capped exponential
backoff (it never gives up), resubscribes every wanted channel, waits for Redis
to confirm them, then reports ``up`` and a gap on those channels. redis-py's own
silent reconnect-and-resubscribe is switched off for the subscriber connection:
it would hide the gap.

Health: :meth:`RedisAntenna.ping` (the contract's optional round trip, probed by
the base class every ``health_interval``) sends ``PING`` on the subscriber
connection, the one that stalls when Redis freezes; its answer comes back in the
pub/sub stream and the reader hands it over (:mod:`xraptor_redis.pongs`). The
probe only reports ``down``; the ``health_check_interval`` watchdog is what drops
and reconnects a silent connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from typing import Any, ClassVar

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xraptor.antenna import Antenna, AntennaError, AntennaUnavailable

from ._bounded import bounded
from .pongs import Pongs
from .publisher import Publisher

logger = logging.getLogger("xraptor_redis")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: channels per SUBSCRIBE command when resubscribing after a reconnect
_SUBSCRIBE_CHUNK = 500
#: what a lost or unreachable backend raises (OSError: sockets below redis-py)
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def _positive(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"redis antenna option {key!r} must be a number, got {value!r}") from None
    if not number > 0 or math.isinf(number):
        raise ValueError(f"redis antenna option {key!r} must be a positive number, got {value!r}")
    return number


class RedisAntenna(Antenna):
    """Pub/sub over Redis ``PUBLISH`` / ``SUBSCRIBE``.

    Options (keyword arguments, merged over :meth:`set_config`):

    * ``url``: Redis URL (``redis://``, ``rediss://``, ``unix://``), default
      ``redis://127.0.0.1:6379/0``;
    * ``publish_timeout``: seconds a publish (or ``is_alive``) may take before it
      raises :class:`~xraptor.AntennaUnavailable`, default 2.0;
    * ``subscribe_timeout``: seconds a new subscription may wait for Redis to
      confirm it, default 5.0;
    * ``reconnect_max_delay``: cap of the reconnect backoff in seconds, default 5.0
      (``reconnect_min_delay``, default 0.05, is its first step);
    * ``pool_size``: connections for publishes and ``is_alive``, default 4;
    * ``health_check_interval``: seconds of silence on the subscriber connection
      after which it is PINGed, and dropped and reconnected when the PING gets no
      answer within as long again; default 5.0, 0 disables;
    * ``health_timeout`` / ``health_interval``: the base class's health probe
      (:meth:`ping`), default 3.0 / 1.0;
    * ``max_pending_publishes``: publishes that may wait for Redis before new ones
      fail at once with :class:`~xraptor.AntennaUnavailable`, default 10000.
    """

    name: ClassVar[str] = "redis"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = self.options
        self.url: str = str(opts.get("url") or DEFAULT_URL)
        self.publish_timeout = _positive(opts, "publish_timeout", 2.0)
        self.subscribe_timeout = _positive(opts, "subscribe_timeout", 5.0)
        self.reconnect_min_delay = _positive(opts, "reconnect_min_delay", 0.05)
        self.reconnect_max_delay = max(
            _positive(opts, "reconnect_max_delay", 5.0), self.reconnect_min_delay
        )
        self.pool_size = int(_positive(opts, "pool_size", 4))
        self.max_pending_publishes = int(_positive(opts, "max_pending_publishes", 10_000))
        self.health_check_interval = float(opts.get("health_check_interval", 5.0) or 0)
        if self.health_check_interval < 0:
            raise ValueError("redis antenna option 'health_check_interval' must be >= 0")
        self._pool: BlockingConnectionPool | None = None
        self._client: Redis | None = None
        self._sub_pool: ConnectionPool | None = None
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._publisher: Publisher | None = None
        self._watchdog: asyncio.Task[None] | None = None
        #: health-probe PINGs waiting for the reader to see their answer
        self._pongs = Pongs()
        #: loop time of the last thing read on the subscriber connection
        self._last_read = 0.0
        #: channels that should be subscribed (watched, or being watched)
        self._wanted: set[str] = set()
        #: SUBSCRIBE / UNSUBSCRIBE confirmations awaited, per channel
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        self._unsubscribed: dict[str, asyncio.Future[None]] = {}
        #: after a reconnect: channels whose resubscription Redis has not confirmed
        self._resubscribing: set[str] = set()
        self._gap_channels: list[str] = []
        self._closing = False
        #: reconnections since connect (for tests and /health)
        self.reconnects = 0

    # ----- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        self._closing = False
        self._pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.pool_size,
            timeout=self.publish_timeout + 1,
            decode_responses=True,
            protocol=2,
            # publish_timeout (asyncio.timeout in publish) is the bound; redis-py's own
            # socket timeouts stay longer, so that they never expire together with it
            # (a nested timeout expiring at the same moment can swallow the cancellation)
            socket_connect_timeout=self.publish_timeout + 1,
            socket_timeout=self.publish_timeout + 1,
            # one immediate retry: a pooled connection may be stale after a restart
            retry=Retry(NoBackoff(), 1),
        )
        self._client = Redis(connection_pool=self._pool)
        self._sub_pool = ConnectionPool.from_url(
            self.url,
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=self.subscribe_timeout + 1,
            # no redis-py retries: we reconnect and resubscribe ourselves, so that
            # the gap is reported instead of hidden
            retry=Retry(NoBackoff(), 0, supported_errors=()),
        )
        try:
            await self._open_subscriber()
        except BaseException as error:
            await self._release_clients()
            if isinstance(error, _UNREACHABLE):
                raise AntennaUnavailable(
                    f"cannot reach Redis at {self._where()}: {error}"
                ) from error
            raise
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(
            self._read_forever(), name=f"xraptor-redis reader {self._where()}"
        )
        self._publisher = Publisher(
            self._client,
            timeout=self.publish_timeout,
            max_pending=self.max_pending_publishes,
            where=self._where(),
        )
        self._publisher.start()
        if self.health_check_interval:
            self._watchdog = loop.create_task(
                self._watch_health(), name=f"xraptor-redis health check {self._where()}"
            )

    async def disconnect(self) -> None:
        self._closing = True
        tasks = [task for task in (self._reader, self._watchdog) if task is not None]
        self._reader = self._watchdog = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        self._wanted.clear()
        self._resubscribing.clear()
        for futures in (self._subscribed, self._unsubscribed):
            for future in futures.values():
                if not future.done():
                    future.set_exception(AntennaError("the redis antenna is closed"))
                    future.exception()  # retrieved: no "never retrieved" warning
            futures.clear()
        await self._close_pubsub()
        await self._release_clients()

    async def _release_clients(self) -> None:
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        sub_pool, self._sub_pool = self._sub_pool, None
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.disconnect()
        if sub_pool is not None:
            await sub_pool.disconnect()

    # ----- driver side -----------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        publisher = self._publisher
        if publisher is None:
            raise AntennaError("the redis antenna is not connected")
        await publisher.publish(channel, message)

    async def is_alive(self, channel: str) -> bool:
        client = self._live_client()
        try:
            counts = await bounded(client.pubsub_numsub(channel), self.publish_timeout)
        except _UNREACHABLE as error:
            raise AntennaUnavailable(
                f"redis PUBSUB NUMSUB failed ({self._where()}): {type(error).__name__}: {error}"
            ) from error
        return any(int(count) > 0 for _, count in counts)

    async def watch(self, channel: str) -> None:
        if self._closing:
            raise AntennaError("the redis antenna is closed")
        self._wanted.add(channel)
        loop = asyncio.get_running_loop()
        future = self._subscribed.get(channel)
        if future is None or future.done():
            future = self._subscribed[channel] = loop.create_future()
        pubsub = self._usable_pubsub()
        if pubsub is not None:
            # on a loss the reader reconnects; its resubscription confirms this channel
            with contextlib.suppress(*_UNREACHABLE):
                await pubsub.subscribe(channel)
        try:
            async with asyncio.timeout(self.subscribe_timeout):
                await asyncio.shield(future)
        except BaseException as error:
            self._forget(channel)
            # a SUBSCRIBE may have reached Redis: take it back (is_alive stays honest)
            await self._send_unsubscribe(channel)
            if isinstance(error, TimeoutError):
                raise AntennaUnavailable(
                    f"Redis did not confirm SUBSCRIBE within {self.subscribe_timeout} s "
                    f"({self._where()})"
                ) from None
            raise

    async def unwatch(self, channel: str) -> None:
        self._forget(channel)
        await self._send_unsubscribe(channel, wait=True)

    async def ping(self) -> None:
        """``PING`` on the subscriber connection; returns once the reader saw the answer."""
        pubsub = self._usable_pubsub()
        if pubsub is None:
            raise AntennaUnavailable(f"the subscriber connection to {self._where()} is down")
        token, answered = self._pongs.expect()
        try:
            await pubsub.ping(token)
            await answered
        finally:
            self._pongs.forget(token)

    def describe(self) -> dict[str, Any]:
        """``/health``: the base fields, plus the URL (no credentials) and outage figures."""
        description = super().describe()
        description.update(
            url=self._where(),
            reconnects=self.reconnects,
            pending_publishes=len(self._publisher) if self._publisher is not None else 0,
        )
        return description

    # ----- internals -----------------------------------------------------------

    def _where(self) -> str:
        # the URL without credentials
        url = self.url
        scheme, sep, rest = url.partition("://")
        if sep and "@" in rest:
            rest = rest.rsplit("@", 1)[1]
        return f"{scheme}{sep}{rest}"

    def _live_client(self) -> Redis:
        client = self._client
        if client is None:
            raise AntennaError("the redis antenna is not connected (start() it first)")
        return client

    def _usable_pubsub(self) -> PubSub | None:
        """The subscriber, when it is connected now (sending on it cannot reconnect it)."""
        pubsub = self._pubsub
        if pubsub is None:
            return None
        connection = _connection_of(pubsub)
        if connection is None or not connection.is_connected:
            return None
        return pubsub

    def _forget(self, channel: str) -> None:
        self._wanted.discard(channel)
        future = self._subscribed.pop(channel, None)
        if future is not None and not future.done():
            future.cancel()
        if channel in self._resubscribing:
            self._resubscribing.discard(channel)
            self._maybe_recovered()

    async def _send_unsubscribe(self, channel: str, *, wait: bool = False) -> None:
        pubsub = self._usable_pubsub()
        if pubsub is None:
            return  # not subscribed on any live connection
        future: asyncio.Future[None] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            self._unsubscribed[channel] = future
        try:
            await pubsub.unsubscribe(channel)
            if future is not None:
                async with asyncio.timeout(self.subscribe_timeout):
                    await future
        except (*_UNREACHABLE, asyncio.CancelledError) as error:
            # the connection is going away, and its subscriptions with it
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            if future is not None and self._unsubscribed.get(channel) is future:
                del self._unsubscribed[channel]

    async def _open_subscriber(self) -> None:
        """Open a new subscriber connection and (re)send SUBSCRIBE for every wanted channel."""
        assert self._sub_pool is not None
        pubsub = PubSub(self._sub_pool, ignore_subscribe_messages=False)
        try:
            async with asyncio.timeout(self.subscribe_timeout):
                await pubsub.connect()  # type: ignore[no-untyped-call]
                connection = _connection_of(pubsub)
                assert connection is not None
                # never let redis-py resubscribe silently on a reconnect of its own
                connection.deregister_connect_callback(  # type: ignore[no-untyped-call]
                    pubsub.on_connect
                )
                channels = list(self._wanted)
                self._resubscribing = set(channels)
                for start in range(0, len(channels), _SUBSCRIBE_CHUNK):
                    await pubsub.subscribe(*channels[start : start + _SUBSCRIBE_CHUNK])
        except BaseException:
            self._resubscribing = set()
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub
        self._last_read = asyncio.get_running_loop().time()

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception:  # closing a broken connection must not stop recovery
                logger.debug("closing the redis subscriber failed", exc_info=True)

    async def _read_forever(self) -> None:
        """The reader task: read, and on a loss reconnect with capped backoff, forever."""
        delay = self.reconnect_min_delay
        while True:
            if self._pubsub is None:
                try:
                    await self._open_subscriber()
                except Exception as error:
                    sleep = delay * random.uniform(0.5, 1.0)
                    logger.info(
                        "redis antenna: reconnect to %s failed (%s: %s); next try in %.2f s",
                        self._where(),
                        type(error).__name__,
                        error,
                        sleep,
                    )
                    await asyncio.sleep(sleep)
                    delay = min(delay * 2, self.reconnect_max_delay)
                    continue
                self.reconnects += 1
                logger.warning(
                    "redis antenna: reconnected to %s, resubscribing %d channels",
                    self._where(),
                    len(self._resubscribing),
                )
                self._maybe_recovered()
            pubsub = self._pubsub
            assert pubsub is not None
            try:
                await self._read(pubsub)
            except Exception as error:
                if self.connection_state == "up":
                    logger.warning(
                        "redis antenna: lost the subscriber connection to %s (%s: %s)",
                        self._where(),
                        type(error).__name__,
                        error,
                    )
                if not isinstance(error, _UNREACHABLE):
                    logger.exception("redis antenna: unexpected error in the reader")
                self.set_state("down")
                self._pongs.fail_all(
                    AntennaUnavailable(f"lost the subscriber connection to {self._where()}")
                )
                self._gap_channels = self.watched_channels()
                self._resubscribing = set()
                await self._close_pubsub()
                # a healthy connection was had: start the backoff from the bottom again
                delay = self.reconnect_min_delay
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _read(self, pubsub: PubSub) -> None:
        connection = _connection_of(pubsub)
        deliver = self.deliver
        loop = asyncio.get_running_loop()
        while True:
            # parse_response would reconnect a closed connection silently: refuse that
            if connection is None or not connection.is_connected:
                raise RedisConnectionError("the subscriber connection was closed")
            response = await pubsub.parse_response(block=True)
            self._last_read = loop.time()
            if not response:
                continue
            if isinstance(response, str):  # PING's plain answer: nothing subscribed yet
                self._pongs.answered(response)
                continue
            kind = response[0]
            if kind == "message":
                deliver(response[1], response[2])
            elif kind == "subscribe":
                self._on_subscribed(response[1])
            elif kind == "unsubscribe":
                future = self._unsubscribed.pop(response[1], None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif kind == "pong":
                self._pongs.answered(response[1])

    async def _watch_health(self) -> None:
        """Detect a subscriber connection that went silent (frozen server, half-open TCP).

        When nothing was read for ``health_check_interval`` seconds, send PING; when
        nothing comes back within another interval, drop the connection, which sends
        the reader into its reconnect-resubscribe-gap path.
        """
        interval = self.health_check_interval
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            pubsub = self._usable_pubsub()
            if pubsub is None or loop.time() - self._last_read < interval:
                continue
            sent = loop.time()
            try:
                await bounded(pubsub.ping(), interval)
            except (*_UNREACHABLE, RedisError):
                pass
            remaining = interval - (loop.time() - sent)
            if remaining > 0:
                await asyncio.sleep(remaining)
            if self._last_read >= sent or self._pubsub is not pubsub:
                continue
            logger.warning(
                "redis antenna: no answer from %s to PING within %.1f s; reconnecting",
                self._where(),
                interval,
            )
            connection = _connection_of(pubsub)
            if connection is not None:
                with contextlib.suppress(Exception):
                    await bounded(connection.disconnect(nowait=True), interval)

    def _on_subscribed(self, channel: str) -> None:
        if channel not in self._wanted:
            return  # unwatched meanwhile; its UNSUBSCRIBE is on the way
        future = self._subscribed.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)
        if channel in self._resubscribing:
            self._resubscribing.discard(channel)
            self._maybe_recovered()

    def _maybe_recovered(self) -> None:
        """After a reconnect: once every resubscription is confirmed, report up and the gap."""
        if self._resubscribing or self._pubsub is None or self.connection_state != "down":
            return
        channels, self._gap_channels = self._gap_channels, []
        self.set_state("up")
        logger.warning(
            "redis antenna: back up; messages may have been missed on %d channels", len(channels)
        )
        self.report_gap([channel for channel in channels if channel in self._wanted])


def _connection_of(pubsub: PubSub) -> AbstractConnection | None:
    """The PubSub's connection (redis-py's annotations say it is always None)."""
    connection: AbstractConnection | None = getattr(pubsub, "connection", None)
    return connection
