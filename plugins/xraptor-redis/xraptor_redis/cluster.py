"""Redis Cluster: the cluster URL, the slot of a channel, the topology, the node clients.

A cluster URL names seed nodes: ``redis+cluster://host:port[,host:port...]`` (TLS:
``rediss+cluster://``), with the credentials and query parameters of a ``redis://``
URL, which apply to every node. The antenna learns the rest of the cluster from
``CLUSTER SLOTS``.

Channels travel as *sharded* channels (``SPUBLISH`` / ``SSUBSCRIBE``), so a message
touches only the shard that owns its channel's slot. A channel ``C`` is sent as
``{<tag>}C``, where ``tag`` is 16 hex digits of a hash of ``C``: the slot is the
tag's, so every channel spreads evenly over the shards whatever braces it holds,
and keys that must share a slot with it (a room's history, its presence) use the
same tag (:func:`slot_tag`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xraptor.antenna import AntennaError, AntennaUnavailable

from ._bounded import bounded

logger = logging.getLogger("xraptor_redis")

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SLOTS = 16384
#: what a lost or unreachable node raises (OSError: sockets below redis-py)
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

Address = tuple[str, int]
_OWN_SETTINGS = (
    "socket_timeout", "socket_connect_timeout", "decode_responses", "protocol", "retry",
    "max_connections", "timeout",
)  # fmt: skip


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def slot_tag(name: str) -> str:
    """The hash tag of ``name`` (a room id, a channel): ``{`` 16 hex digits ``}``.

    Keys and channels that must share a slot with ``name`` start with it.
    """
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8)
    return "{" + digest.hexdigest() + "}"


#: characters of the tag in front of every wire channel
TAG_LENGTH = len(slot_tag(""))


@functools.lru_cache(maxsize=16384)
def route(channel: str) -> tuple[str, int]:
    """``channel``'s name on the wire (tagged) and its slot."""
    tag = slot_tag(channel)
    return tag + channel, key_slot(tag.encode())


def fmt(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ClusterConfig:
    """What a cluster URL says: the seed nodes and how to connect to any node."""

    seeds: tuple[Address, ...]
    #: keyword arguments of a redis-py connection to any node (credentials, TLS, name)
    connection_kwargs: dict[str, Any] = field(hash=False)
    connection_class: type[Connection] = Connection
    where: str = ""

    @classmethod
    def from_url(cls, url: str) -> ClusterConfig:
        """Read ``redis+cluster://`` / ``rediss+cluster://`` URLs, and ``redis://`` /
        ``rediss://`` ones (one seed) for ``cluster=True``.

        :raises ValueError: another scheme, no node, a bad port, a database other than 0
        """
        scheme = url.partition("://")[0].lower()
        expected = "expected redis+cluster://host:port[,host:port...] (or rediss+cluster://)"
        if scheme not in (*CLUSTER_SCHEMES, "redis", "rediss"):
            raise ValueError(
                f"redis cluster mode cannot use {scheme or 'this'} URL {url!r}; {expected}"
            )
        tls = scheme.startswith("rediss")
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        seeds: list[Address] = []
        for item in hosts.split(","):
            item = item.strip()
            if not item:
                continue
            if item.startswith("["):  # [IPv6]:port
                host, _, rest = item[1:].partition("]")
                port_text = rest.removeprefix(":")
            else:
                host, _, port_text = item.partition(":")
            if not host:
                raise ValueError(
                    f"redis cluster URL {_hide(url)!r}: {item!r} has no host; {expected}"
                )
            try:
                port = int(port_text) if port_text else 6379
            except ValueError:
                raise ValueError(
                    f"redis cluster URL {_hide(url)!r}: {item!r} has no valid port; {expected}"
                ) from None
            if not 0 < port < 65536:
                raise ValueError(f"redis cluster URL {_hide(url)!r}: port {port} out of range")
            seeds.append((host, port))
        if not seeds:
            raise ValueError(f"redis cluster URL {_hide(url)!r} names no node; {expected}")
        database = parts.path.strip("/")
        if database not in ("", "0"):
            raise ValueError(
                f"redis cluster URL {_hide(url)!r}: a Redis Cluster has only database 0, "
                f"not {unquote(database)!r}"
            )
        # redis-py reads credentials, TLS and query options; one URL stands for every node
        single = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}h/0"
        if parts.query:
            single += "?" + parts.query
        kwargs: dict[str, Any] = dict(parse_url(single))
        # the node's address, and what the antenna sets itself (its timeouts, decoding,
        # retries), are not taken from the URL
        for key in ("host", "port", "db", "path", *_OWN_SETTINGS):
            kwargs.pop(key, None)
        connection_class: type[Connection] = kwargs.pop("connection_class", Connection)
        where = f"{scheme}://{','.join(fmt(seed) for seed in seeds)}"
        return cls(tuple(seeds), kwargs, connection_class, where)

    def connection(self, address: Address, *, connect_timeout: float) -> Connection:
        """A new connection to one node (not connected yet), without redis-py retries."""
        host, port = address
        return self.connection_class(
            **self.connection_kwargs,
            host=host,
            port=port,
            decode_responses=True,
            # a positioned message (a room with history) starts with the byte 0xFF, which
            # no UTF-8 text holds: decoded to MARK instead of failing (xraptor_redis.history)
            encoding_errors="surrogateescape",
            protocol=2,
            socket_connect_timeout=connect_timeout,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0, supported_errors=()),
        )

    def client(self, address: Address, *, pool_size: int, timeout: float) -> Redis:
        """A pooled client to one node (publishes, ``PUBSUB SHARDNUMSUB``, ``CLUSTER SLOTS``)."""
        host, port = address
        pool = BlockingConnectionPool(
            **self.connection_kwargs,
            connection_class=self.connection_class,
            host=host,
            port=port,
            max_connections=pool_size,
            timeout=timeout + 1,
            decode_responses=True,
            protocol=2,
            # the callers' own deadlines are the bound (see RedisAntenna.connect)
            socket_connect_timeout=timeout + 1,
            socket_timeout=timeout + 1,
            retry=Retry(NoBackoff(), 1),
        )
        return Redis(connection_pool=pool)


def cluster_client(url: str, *, max_connections: int, timeout: float) -> RedisCluster:
    """redis-py's cluster client for ``url`` (for keyed commands, e.g. the rate limiter's
    script: one key, no order to keep, so its redirects and retries fit)."""
    config = ClusterConfig.from_url(url)
    return RedisCluster(
        **config.connection_kwargs,
        startup_nodes=[ClusterNode(host, port) for host, port in config.seeds],
        ssl=issubclass(config.connection_class, SSLConnection),
        max_connections=max_connections,
        decode_responses=True,
        protocol=2,
        socket_connect_timeout=timeout + 1,
        socket_timeout=timeout + 1,
    )


def _hide(url: str) -> str:
    """``url`` without its credentials (for messages)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class Topology:
    """Which master serves each slot, as the cluster last said; and a client per node.

    :param pool_size: connections per node client
    :param timeout: seconds a request to one node may take
    """

    def __init__(self, config: ClusterConfig, *, pool_size: int, timeout: float) -> None:
        self.config = config
        self.pool_size = pool_size
        self.timeout = timeout
        #: the master of each slot (None: no node serves it)
        self._owners: list[Address | None] = [None] * SLOTS
        self.masters: list[Address] = []
        #: every node the cluster named (masters and replicas), then the seeds
        self.nodes: list[Address] = list(config.seeds)
        self._clients: dict[Address, Redis] = {}
        #: changes each time the ownership of a slot changed
        self.version = 0
        self._refreshing: asyncio.Future[None] | None = None

    def owner(self, slot: int) -> Address | None:
        return self._owners[slot]

    def client(self, address: Address) -> Redis:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self.config.client(
                address, pool_size=self.pool_size, timeout=self.timeout
            )
        return client

    def learn(self, slot: int, address: Address) -> None:
        """A ``MOVED`` reply said ``address`` serves ``slot`` now."""
        if self._owners[slot] != address:
            self._owners[slot] = address
            self.version += 1

    async def refresh(self) -> None:
        """Ask the cluster (any node that answers) who serves each slot.

        Concurrent calls share one round.

        :raises AntennaUnavailable: no node answered
        :raises AntennaError: a node is not in cluster mode
        """
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        future = self._refreshing = asyncio.get_running_loop().create_future()
        try:
            await self._refresh()
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: the callers that share it get it raised
            raise
        else:
            future.set_result(None)
        finally:
            self._refreshing = None

    async def _refresh(self) -> None:
        candidates = list(dict.fromkeys([*self.masters, *self.nodes, *self.config.seeds]))
        # masters first (they know), in a random order (not every process asks the same one)
        random.shuffle(candidates)
        candidates.sort(key=lambda address: address not in self.masters)
        failures: list[str] = []
        for address in candidates:
            try:
                asked = self.client(address).execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                slots = await bounded(asked, self.timeout)
            except ResponseError as error:
                if "cluster support disabled" in str(error).lower():
                    raise AntennaError(
                        f"redis cluster mode: the server at {fmt(address)} is not a Redis "
                        "Cluster (cluster support disabled); use a redis:// URL for a single "
                        "server"
                    ) from error
                failures.append(f"{fmt(address)}: {error}")
                continue
            except (*UNREACHABLE, RedisError) as error:
                failures.append(f"{fmt(address)}: {type(error).__name__}: {error}")
                continue
            self._apply(slots, address)
            return
        raise AntennaUnavailable(
            f"no node of the Redis Cluster {self.config.where} answered CLUSTER SLOTS "
            f"({'; '.join(failures[:3])})"
        )

    def _apply(self, slots: Any, asked: Address) -> None:
        owners: list[Address | None] = [None] * SLOTS
        masters: list[Address] = []
        nodes: list[Address] = []
        for entry in _slot_entries(slots):
            start, end, master, replicas = entry
            master = (master[0] or asked[0], master[1])
            for slot in range(start, end + 1):
                owners[slot] = master
            if master not in masters:
                masters.append(master)
            for node in (master, *((r[0] or asked[0], r[1]) for r in replicas)):
                if node not in nodes:
                    nodes.append(node)
        if owners != self._owners:
            self._owners = owners
            self.version += 1
        self.masters = masters
        self.nodes = nodes

    async def prune(self, keep: set[Address]) -> None:
        """Close the clients of nodes the cluster no longer names (bounded memory), but
        those in ``keep`` (still in use)."""
        known = {*self.nodes, *self.config.seeds, *keep}
        for address in [a for a in self._clients if a not in known]:
            await self._close(self._clients.pop(address))

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await self._close(client)

    async def _close(self, client: Redis) -> None:
        try:
            await bounded(client.aclose(), self.timeout)
            await bounded(client.connection_pool.disconnect(), self.timeout)
        except Exception:  # closing a broken connection must not stop the others
            logger.debug("closing a redis cluster node client failed", exc_info=True)


def _slot_entries(
    slots: Any,
) -> list[tuple[int, int, Address, list[Address]]]:
    """``CLUSTER SLOTS``, raw (a list) or as redis-py parses it (a dict)."""
    entries: list[tuple[int, int, Address, list[Address]]] = []
    if isinstance(slots, dict):
        for (start, end), info in slots.items():
            primary = info["primary"]
            replicas = [(str(r[0]), int(r[1])) for r in info.get("replicas", [])]
            entries.append((int(start), int(end), (str(primary[0]), int(primary[1])), replicas))
        return entries
    for item in slots:
        start, end, primary, *replicas = item
        entries.append(
            (
                int(start),
                int(end),
                (str(primary[0]), int(primary[1])),
                [(str(r[0]), int(r[1])) for r in replicas],
            )
        )
    return entries


def is_ask(error: BaseException) -> bool:
    """Whether ``error`` is an ``ASK`` reply (a one-time redirect during a slot
    migration), not ``MOVED`` (the slot changed hands)."""
    if isinstance(error, AskError):
        return not isinstance(error, MovedError)
    return str(error).startswith("ASK ")


def moved_to(error: BaseException) -> tuple[int, Address] | None:
    """The slot and node of a ``MOVED`` / ``ASK`` reply, else None (redis-py 8 raises
    them as :class:`~redis.exceptions.AskError` and its subclass ``MovedError``; older
    versions, outside their cluster client, as a plain ``ResponseError``)."""
    if isinstance(error, AskError):
        return int(error.slot_id), (str(error.host).strip("[]"), int(error.port))
    words = str(error).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    try:
        return int(words[1]), (host.strip("[]"), int(port))
    except ValueError:
        return None
