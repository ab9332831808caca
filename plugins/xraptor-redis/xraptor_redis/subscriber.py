"""The subscriber connection of a Redis antenna: subscriptions, reading, recovery.

One redis-py :class:`~redis.asyncio.client.PubSub` carries every subscription of
the antenna. A single reader task reads it: it hands each message to
:meth:`Antenna.deliver`, resolves the waits of ``SUBSCRIBE`` / ``UNSUBSCRIBE``
on Redis's confirmations, and hands health-probe answers to
:class:`~xraptor_redis.pongs.Pongs`.

When the connection drops, the reader reports ``down``, reconnects with capped
exponential backoff (it never gives up), resubscribes every wanted channel,
waits for Redis to confirm them, then reports ``up`` and a gap on those
channels. redis-py's own silent reconnect-and-resubscribe is switched off for
this connection: it would hide the gap. A watchdog task PINGs the connection
after ``health_check_interval`` seconds of silence and drops it when the PING
gets no answer within as long again, which sends the reader into that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from redis.asyncio import ConnectionPool
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xraptor.antenna import Antenna, AntennaUnavailable
from xraptor.closing import stop_tasks

from ._bounded import bounded
from ._closing import fail_subscribes
from .history import MARK, deliver_positioned
from .pongs import Pongs

logger = logging.getLogger("xraptor_redis")

#: channels per SUBSCRIBE command when resubscribing after a reconnect
_SUBSCRIBE_CHUNK = 500
#: what a lost or unreachable backend raises (OSError: sockets below redis-py)
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class Subscriber:
    """The subscriber connection of ``antenna``, and the channels it should carry.

    It reports to the antenna through the contract's driver helpers
    (:meth:`~xraptor.antenna.Antenna.deliver`, ``set_state``, ``report_gap``).

    :param pongs: the antenna's health-probe waiters; the reader hands them answers
    :param where: how messages name the server (a URL without credentials)
    """

    def __init__(
        self,
        antenna: Antenna,
        pongs: Pongs,
        *,
        where: str,
        subscribe_timeout: float,
        reconnect_min_delay: float,
        reconnect_max_delay: float,
        health_check_interval: float,
    ) -> None:
        self._antenna = antenna
        #: health-probe PINGs waiting for the reader to see their answer
        self._pongs = pongs
        self.where = where
        self.subscribe_timeout = subscribe_timeout
        self.reconnect_min_delay = reconnect_min_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.health_check_interval = health_check_interval
        self._pool: ConnectionPool | None = None
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
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
        #: reconnections since connect (for tests and /health)
        self.reconnects = 0

    # ----- lifecycle -----------------------------------------------------------

    async def connect(self, url: str) -> None:
        """Open the connection to ``url``, then start the reader and the watchdog.

        On failure the pool is released and the error raised as it came.
        """
        self._pool = ConnectionPool.from_url(
            url,
            decode_responses=True,
            # a positioned message (a room with history) starts with the byte 0xFF, which
            # no UTF-8 text holds: decoded to MARK instead of failing (xraptor_redis.history)
            encoding_errors="surrogateescape",
            protocol=2,
            socket_connect_timeout=self.subscribe_timeout + 1,
            # no redis-py retries: we reconnect and resubscribe ourselves, so that
            # the gap is reported instead of hidden
            retry=Retry(NoBackoff(), 0, supported_errors=()),
        )
        try:
            await self._open()
        except BaseException:
            await self._release_pool()
            raise
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(
            self._read_forever(), name=f"xraptor-redis reader {self.where}"
        )
        if self.health_check_interval:
            self._watchdog = loop.create_task(
                self._watch_health(), name=f"xraptor-redis health check {self.where}"
            )

    async def close(self) -> None:
        """Stop the tasks, fail every waiting (un)subscribe, close the connection and pool."""
        tasks = (self._reader, self._watchdog)
        self._reader = self._watchdog = None
        await stop_tasks(*tasks)
        self._wanted.clear()
        self._resubscribing.clear()
        fail_subscribes(self._subscribed, self._unsubscribed)
        await self._close_pubsub()
        await self._release_pool()

    async def _release_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:  # bounded, like every wait on redis-py while closing (see _send_unsubscribe)
                await bounded(pool.disconnect(), self.subscribe_timeout)
            except TimeoutError:
                logger.warning("redis antenna: closing the subscriber pool timed out")

    # ----- subscriptions ---------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe ``channel``; return once Redis confirmed it.

        :raises AntennaUnavailable: no confirmation within ``subscribe_timeout``
        """
        self._wanted.add(channel)
        loop = asyncio.get_running_loop()
        future = self._subscribed.get(channel)
        if future is None or future.done():
            future = self._subscribed[channel] = loop.create_future()
        pubsub = self.usable()
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
                    f"({self.where})"
                ) from None
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop wanting ``channel``; return once Redis confirmed (or the connection is gone)."""
        self._forget(channel)
        await self._send_unsubscribe(channel, wait=True)

    def usable(self) -> PubSub | None:
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
        pubsub = self.usable()
        if pubsub is None:
            return  # not subscribed on any live connection
        future: asyncio.Future[None] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            self._unsubscribed[channel] = future
        try:
            # bounded: redis-py may be reconnecting this connection (a wedged send or
            # reconnect must not hold up an UNSUB, a disconnect or a shutdown)
            await bounded(pubsub.unsubscribe(channel), self.subscribe_timeout)
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

    # ----- the connection, read and recovered --------------------------------------

    async def _open(self) -> None:
        """Open a new subscriber connection and (re)send SUBSCRIBE for every wanted channel."""
        assert self._pool is not None
        pubsub = PubSub(self._pool, ignore_subscribe_messages=False)
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
                await bounded(pubsub.aclose(), self.subscribe_timeout)  # type: ignore[no-untyped-call]
            except Exception:  # closing a broken connection must not stop recovery
                logger.debug("closing the redis subscriber failed", exc_info=True)

    async def _read_forever(self) -> None:
        """The reader task: read, and on a loss reconnect with capped backoff, forever."""
        antenna = self._antenna
        delay = self.reconnect_min_delay
        while True:
            if self._pubsub is None:
                try:
                    await self._open()
                except Exception as error:
                    sleep = delay * random.uniform(0.5, 1.0)
                    logger.info(
                        "redis antenna: reconnect to %s failed (%s: %s); next try in %.2f s",
                        self.where,
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
                    self.where,
                    len(self._resubscribing),
                )
                self._maybe_recovered()
            pubsub = self._pubsub
            assert pubsub is not None
            try:
                await self._read(pubsub)
            except Exception as error:
                if antenna.connection_state == "up":
                    logger.warning(
                        "redis antenna: lost the subscriber connection to %s (%s: %s)",
                        self.where,
                        type(error).__name__,
                        error,
                    )
                if not isinstance(error, _UNREACHABLE):
                    logger.exception("redis antenna: unexpected error in the reader")
                antenna.set_state("down")
                self._pongs.fail_all(
                    AntennaUnavailable(f"lost the subscriber connection to {self.where}")
                )
                self._gap_channels = antenna.watched_channels()
                self._resubscribing = set()
                await self._close_pubsub()
                # a healthy connection was had: start the backoff from the bottom again
                delay = self.reconnect_min_delay
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _read(self, pubsub: PubSub) -> None:
        connection = _connection_of(pubsub)
        deliver = self._antenna.deliver
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
                data = response[2]
                if data[:1] == MARK:
                    deliver_positioned(self._antenna, response[1], data)
                else:
                    deliver(response[1], data)
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
            pubsub = self.usable()
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
                self.where,
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
        antenna = self._antenna
        if self._resubscribing or self._pubsub is None or antenna.connection_state != "down":
            return
        channels, self._gap_channels = self._gap_channels, []
        antenna.set_state("up")
        logger.warning(
            "redis antenna: back up; messages may have been missed on %d channels", len(channels)
        )
        antenna.report_gap([channel for channel in channels if channel in self._wanted])


def _connection_of(pubsub: PubSub) -> AbstractConnection | None:
    """The PubSub's connection (redis-py's annotations say it is always None)."""
    connection: AbstractConnection | None = getattr(pubsub, "connection", None)
    return connection
