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

History (the contract's optional capability): a room configured with history keeps
a Redis Stream, appended and published in one Lua script; see :mod:`xraptor_redis.history`.

This module holds the antenna contract; the subscriber connection (its reader,
resubscription and watchdog) is :mod:`xraptor_redis.subscriber`, the publisher
task :mod:`xraptor_redis.publisher`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xraptor.antenna import Antenna, AntennaError, AntennaUnavailable
from xraptor.history import HistoryEntry, HistoryPolicy, Position

from ._bounded import bounded
from .cluster import CLUSTER_SCHEMES, is_cluster_url
from .history import APPEND, KEYS, RedisHistory
from .history import DEFAULT_PREFIX as HISTORY_PREFIX
from .pongs import Pongs
from .presence import DEFAULT_PREFIX as PRESENCE_PREFIX
from .presence import NodeScripts, RedisPresence
from .publisher import Publisher
from .subscriber import Subscriber

DEFAULT_URL = "redis://127.0.0.1:6379/0"
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


def _wants_cluster(options: dict[str, Any]) -> bool:
    return bool(options.get("cluster")) or is_cluster_url(str(options.get("url") or ""))


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
      fail at once with :class:`~xraptor.AntennaUnavailable`, default 10000;
    * ``presence_ttl``: seconds a room member of a process that stopped refreshing it
      stays listed, default 30; ``presence_prefix``: what starts the presence keys,
      default ``xraptor:presence:`` (see :mod:`xraptor_redis.presence`).
    * ``history_prefix``: the prefix of the keys of rooms with history, default
      ``xraptor:history`` (no braces: the keys carry a Redis Cluster hash tag).
    """

    name: ClassVar[str] = "redis"
    #: redis-py's URL schemes: ``redis://``, ``rediss://`` (TLS) and ``unix://`` (a socket);
    #: ``redis+cluster://`` and ``rediss+cluster://`` select cluster mode
    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)

    def __new__(cls, *args: Any, **options: Any) -> RedisAntenna:
        # cluster mode (a cluster URL or cluster=True) is a class of its own
        if cls is RedisAntenna and _wants_cluster({**cls._config, **options}):
            from .cluster_antenna import RedisClusterAntenna

            return super().__new__(RedisClusterAntenna)
        return super().__new__(cls)

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        return {"url": url, "cluster": True} if is_cluster_url(url) else {"url": url}

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
        self._redis_history = RedisHistory(opts.get("history_prefix", HISTORY_PREFIX))
        self._pool: BlockingConnectionPool | None = None
        self._client: Redis | None = None
        self._publisher: Publisher | None = None
        #: health-probe PINGs waiting for the reader to see their answer
        self._pongs = Pongs()
        self._subscriber = Subscriber(
            self,
            self._pongs,
            where=self._where(),
            subscribe_timeout=self.subscribe_timeout,
            reconnect_min_delay=self.reconnect_min_delay,
            reconnect_max_delay=self.reconnect_max_delay,
            health_check_interval=self.health_check_interval,
        )
        self._closing = False
        prefix = opts.get("presence_prefix", PRESENCE_PREFIX)
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(
                f"redis antenna option 'presence_prefix' must be a str, got {prefix!r}"
            )
        self._presence = RedisPresence(
            prefix, self.publish_timeout, self._where(), NodeScripts(self._live_client)
        )

    @property
    def reconnects(self) -> int:
        """Reconnections of the subscriber connection since connect (for tests and /health)."""
        return self._subscriber.reconnects

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
        try:
            await self._subscriber.connect(self.url)
        except BaseException as error:
            await self._release_clients()
            if isinstance(error, _UNREACHABLE):
                raise AntennaUnavailable(
                    f"cannot reach Redis at {self._where()}: {error}"
                ) from error
            raise
        self._publisher = Publisher(
            self._client,
            timeout=self.publish_timeout,
            max_pending=self.max_pending_publishes,
            where=self._where(),
            script=APPEND,
            script_keys=KEYS,
        )
        self._publisher.start()

    async def disconnect(self) -> None:
        self._closing = True
        await self._subscriber.close()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        await self._release_clients()

    async def _release_clients(self) -> None:
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.disconnect()

    # ----- driver side -----------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        publisher = self._publisher
        if publisher is None:
            raise AntennaError("the redis antenna is not connected")
        await publisher.publish(channel, message)

    async def publish_with_history(
        self, channel: str, message: str, history: HistoryPolicy
    ) -> Position:
        publisher = self._publisher
        if publisher is None:
            raise AntennaError("the redis antenna is not connected")
        return await self._redis_history.append(publisher, channel, message, history)

    async def read_history(self, channel: str, after: Position) -> list[HistoryEntry] | None:
        client = self._live_client()
        try:
            return await bounded(
                self._redis_history.read(client, channel, after), self.publish_timeout
            )
        except _UNREACHABLE as error:
            raise AntennaUnavailable(
                f"reading the history of {channel[:64]!r} failed ({self._where()}): "
                f"{type(error).__name__}: {error}"
            ) from error

    async def newest_position(self, channel: str) -> Position:
        client = self._live_client()
        try:
            return await bounded(self._redis_history.newest(client, channel), self.publish_timeout)
        except _UNREACHABLE as error:
            raise AntennaUnavailable(
                f"reading where the history of {channel[:64]!r} stands failed "
                f"({self._where()}): {type(error).__name__}: {error}"
            ) from error

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
        await self._subscriber.subscribe(channel)

    async def unwatch(self, channel: str) -> None:
        await self._subscriber.unsubscribe(channel)

    async def presence_set(self, room: str, members: Mapping[str, str]) -> None:
        await self._presence.put(room, members, self.presence_ttl)

    async def presence_remove(self, room: str, members: Collection[str]) -> None:
        await self._presence.remove(room, members)

    async def presence_list(self, room: str) -> dict[str, str]:
        return await self._presence.read(room)

    async def presence_expire(self, room: str) -> dict[str, str]:
        return await self._presence.expire(room)

    async def ping(self) -> None:
        """``PING`` on the subscriber connection; returns once the reader saw the answer."""
        pubsub = self._subscriber.usable()
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
