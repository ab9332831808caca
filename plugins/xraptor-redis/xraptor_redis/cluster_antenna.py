"""The Redis antenna in cluster mode: sharded pub/sub over a Redis Cluster.

Selected with a ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``)
URL or ``cluster=True``: :class:`~xraptor_redis.antenna.RedisAntenna` then makes a
:class:`RedisClusterAntenna`, which takes the same options.

Connections a process holds: one subscriber connection per master
(:mod:`xraptor_redis.cluster_subscriber`), and per master a pool of at most
``pool_size`` connections for ``SPUBLISH``, ``PUBSUB SHARDNUMSUB`` and ``CLUSTER
SLOTS`` (:mod:`xraptor_redis.cluster_publisher`), also used for the history and
presence scripts (:mod:`xraptor_redis.cluster_commands`): bounded by the number of
nodes, whatever the number of channels.

History and presence are kept as on one server (:mod:`xraptor_redis.history`,
:mod:`xraptor_redis.presence`), each room's keys in the slot of its hash tag, so every
script runs on one master: a room's history shares its slot (and so its master) with
the room's sharded channel. After a failover or a slot move, the channels that were
moved get a gap report once subscribed again, and rooms with history catch up from it
(:func:`xraptor.recovery.catch_up`). What a failover can lose: the writes the old
master acknowledged but had not yet sent to the replica that took over (Redis
replicates asynchronously); a room whose last delivered message is among them gets
the ``unrecovered`` notice instead.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError, ResponseError

from xraptor.antenna import AntennaError, AntennaUnavailable
from xraptor.history import HistoryEntry, HistoryPolicy, Position

from ._bounded import bounded
from .antenna import RedisAntenna
from .cluster import UNREACHABLE, ClusterConfig, Topology, fmt, moved_to, route
from .cluster_commands import SlotCommands
from .cluster_publisher import ClusterPublisher
from .cluster_subscriber import ClusterSubscriber
from .history import NEWEST, READ
from .presence import RedisPresence


class RedisClusterAntenna(RedisAntenna):
    """Pub/sub over a Redis Cluster's ``SPUBLISH`` / ``SSUBSCRIBE`` (Redis 7 or later).

    Options: those of :class:`~xraptor_redis.antenna.RedisAntenna`; ``url`` names
    seed nodes; ``pool_size`` and ``max_pending_publishes`` count per master; and
    ``topology_refresh_interval``: seconds between reads of the topology that nothing
    triggered (so a master that froze or was cut off, and was replaced, is left), default
    2.0, 0 disables.

    ``state`` is ``down`` only when no master can be reached; see the README's
    "Redis Cluster" for what a failover does to streams.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options.get("cluster") is False:
            raise ValueError(
                f"redis antenna: cluster=False contradicts the cluster URL {self._where()!r}"
            )
        self.config = ClusterConfig.from_url(self.url)
        self.refresh_interval = float(self.options.get("topology_refresh_interval", 2.0) or 0)
        if self.refresh_interval < 0:
            raise ValueError("redis antenna option 'topology_refresh_interval' must be >= 0")
        self.topology = Topology(
            self.config, pool_size=self.pool_size, timeout=self.publish_timeout
        )
        self._cluster = ClusterSubscriber(
            self,
            self.topology,
            subscribe_timeout=self.subscribe_timeout,
            reconnect_min_delay=self.reconnect_min_delay,
            reconnect_max_delay=self.reconnect_max_delay,
            health_check_interval=self.health_check_interval,
            refresh_interval=self.refresh_interval,
        )
        #: keyed commands (history reads, presence) on the master of their slot
        self._commands = SlotCommands(self.topology, self._cluster.topology_suspect)
        self._presence = RedisPresence(
            self._presence.prefix, self.publish_timeout, self.config.where, self._commands.script
        )
        self._shards: ClusterPublisher | None = None

    @property
    def reconnects(self) -> int:
        """Subscriber connections opened since connect (failovers, reconnections)."""
        return self._cluster.reconnects

    async def connect(self) -> None:
        self._closing = False
        try:
            await self._cluster.connect()
        except BaseException:
            await self.topology.aclose()
            raise
        self._shards = ClusterPublisher(
            self.topology,
            timeout=self.publish_timeout,
            max_pending=self.max_pending_publishes,
            on_lost=self._cluster.topology_suspect,
            commands=self._commands,
        )
        self._cluster.on_topology = self._shards.prune

    async def disconnect(self) -> None:
        self._closing = True
        await self._cluster.close()
        shards, self._shards = self._shards, None
        if shards is not None:
            await shards.close()
        await self.topology.aclose()

    async def publish(self, channel: str, message: str) -> None:
        shards = self._shards
        if shards is None:
            raise AntennaError("the redis antenna is not connected")
        await shards.publish(channel, message)

    async def publish_with_history(
        self, channel: str, message: str, history: HistoryPolicy
    ) -> Position:
        shards = self._shards
        if shards is None:
            raise AntennaError("the redis antenna is not connected")
        call = self._redis_history.append_call(channel, message, history, route(channel)[0])
        return self._redis_history.appended_at(await shards.call(channel, call))

    async def read_history(self, channel: str, after: Position) -> list[HistoryEntry] | None:
        if self._shards is None:
            raise AntennaError("the redis antenna is not connected (start() it first)")
        keys, args = self._redis_history.read_call(channel, after)
        try:
            found = await bounded(self._commands.script(READ, keys, args), self.publish_timeout)
        except (*UNREACHABLE, RedisError) as error:
            if isinstance(error, UNREACHABLE):
                self._cluster.topology_suspect()
            raise AntennaUnavailable(
                f"reading the history of {channel[:64]!r} failed ({self.config.where}): "
                f"{type(error).__name__}: {error}"
            ) from error
        return self._redis_history.read_answer(after, found)

    async def newest_position(self, channel: str) -> Position:
        if self._shards is None:
            raise AntennaError("the redis antenna is not connected (start() it first)")
        keys, args = self._redis_history.newest_call(channel)
        try:
            found = await bounded(self._commands.script(NEWEST, keys, args), self.publish_timeout)
        except (*UNREACHABLE, RedisError) as error:
            if isinstance(error, UNREACHABLE):
                self._cluster.topology_suspect()
            raise AntennaUnavailable(
                f"reading where the history of {channel[:64]!r} stands failed "
                f"({self.config.where}): {type(error).__name__}: {error}"
            ) from error
        return self._redis_history.appended_at(found)

    async def is_alive(self, channel: str) -> bool:
        if self._shards is None:
            raise AntennaError("the redis antenna is not connected (start() it first)")
        wire, slot = route(channel)
        for _ in range(2):  # once more after a MOVED
            address = self.topology.owner(slot)
            if address is None:
                raise AntennaUnavailable(f"no master of {self.config.where} serves the channel now")
            try:
                counts = await bounded(
                    self.topology.client(address).pubsub_shardnumsub(wire), self.publish_timeout
                )
            except ResponseError as error:
                target = moved_to(error)
                if target is None:
                    raise AntennaError(f"redis refused PUBSUB SHARDNUMSUB: {error}") from error
                self.topology.learn(*target)
                self._cluster.topology_suspect()
                continue
            except (*UNREACHABLE, RedisError) as error:
                self._cluster.topology_suspect()
                raise AntennaUnavailable(
                    f"redis PUBSUB SHARDNUMSUB failed ({fmt(address)}): "
                    f"{type(error).__name__}: {error}"
                ) from error
            return any(int(count) > 0 for _, count in counts)
        raise AntennaUnavailable(f"the slot of the channel keeps moving ({self.config.where})")

    async def watch(self, channel: str) -> None:
        if self._closing:
            raise AntennaError("the redis antenna is closed")
        await self._cluster.subscribe(channel)

    async def unwatch(self, channel: str) -> None:
        await self._cluster.unsubscribe(channel)

    async def ping(self) -> None:
        """``PING`` on every subscriber connection; returns once one answered."""
        await self._cluster.ping()

    def describe(self) -> dict[str, Any]:
        description = super().describe()
        description.update(
            url=self.config.where,
            cluster=True,
            masters=self._cluster.describe(),
            pending_publishes=len(self._shards) if self._shards is not None else 0,
        )
        return description
