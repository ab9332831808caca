"""``redis-rate-limit``: a fixed-window rate limiter shared by every process through Redis.

Enable it with ``server.use_middleware("redis-rate-limit", priority=10,
pattern="^chat/", limit=20, window=10, url="redis://...")``. Each client gets
``limit`` requests per ``window`` seconds, counted in Redis, so all processes
and hosts sharing the Redis share the budget.

The count is one Lua script (INCR, and PEXPIRE when the window opens): atomic in
Redis and one round trip per request. It is written here rather than taken from
the ``limits`` library, which would bring a second Redis client (``coredis``) and
more round trips per request for the same fixed window.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from xraptor import Request, Response

from ._bounded import bounded
from .antenna import DEFAULT_URL
from .cluster import cluster_client, is_cluster_url, slot_tag

logger = logging.getLogger("xraptor_redis.ratelimit")

# KEYS[1]: the client's counter; ARGV[1]: the window in milliseconds.
# Returns {requests in this window, milliseconds until the window closes}.
_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if count == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""

_MAX_KEY_PART = 128


class RedisRateLimit:
    """The middleware ``(request, connection) -> Response | None``.

    :param limit: requests allowed per window and client
    :param window: window length in seconds
    :param key: ``"remote"`` (the connection's IP) or ``"header:<name>"`` (a request
        header's value; requests without it are counted by IP)
    :param url: the Redis URL
    :param scope: counters are shared by every limiter with the same ``prefix`` and
        ``scope``; give two limiters on different routes different scopes
        (default: ``"<limit>/<window>"``)
    :param prefix: Redis key prefix, default ``xraptor:ratelimit``
    :param timeout: seconds one check may take
    :param cluster: ``url`` names seed nodes of a Redis Cluster (implied by a
        ``redis+cluster://`` / ``rediss+cluster://`` URL); each client's key then
        carries a hash tag made from a hash of its id (ids may hold braces)
    :param fail_open: when Redis cannot be reached, let requests through (default,
        logged) instead of refusing them
    """

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        key: str = "remote",
        url: str = DEFAULT_URL,
        scope: str | None = None,
        prefix: str = "xraptor:ratelimit",
        timeout: float = 0.5,
        fail_open: bool = True,
        pool_size: int = 4,
        cluster: bool = False,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"redis-rate-limit: limit must be a positive int, got {limit!r}")
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise ValueError(f"redis-rate-limit: window must be positive seconds, got {window!r}")
        if key == "remote":
            self._header: str | None = None
        elif key.startswith("header:") and key[len("header:") :]:
            self._header = key[len("header:") :]
        else:
            raise ValueError(
                f"redis-rate-limit: key must be 'remote' or 'header:<name>', got {key!r}"
            )
        self.limit = limit
        self.window = float(window)
        self.key = key
        self.url = url
        self.timeout = float(timeout)
        self.fail_open = fail_open
        self._window_ms = max(1, int(self.window * 1000))
        self._prefix = f"{prefix}:{scope if scope is not None else f'{limit}/{window}'}:"
        #: Redis Cluster (``redis+cluster://`` or ``cluster=True``): each key carries the
        #: hash tag of its client id, so braces in an id cannot pick the slot
        self._cluster = cluster or is_cluster_url(url)
        self._pool: BlockingConnectionPool | None = None
        self._client: Redis | RedisCluster
        if self._cluster:
            self._client = cluster_client(url, max_connections=pool_size, timeout=self.timeout)
        else:
            self._pool = BlockingConnectionPool.from_url(
                url,
                max_connections=pool_size,
                timeout=self.timeout + 1,
                decode_responses=True,
                protocol=2,
                # the check's own asyncio.timeout is the bound (see RedisAntenna.connect)
                socket_connect_timeout=self.timeout + 1,
                socket_timeout=self.timeout + 1,
                retry=Retry(NoBackoff(), 1),
            )
            self._client = Redis(connection_pool=self._pool)
        self._script = self._client.register_script(_SCRIPT)
        self.__name__ = "redis-rate-limit"

    def client_id(self, request: Request, connection: Any) -> str:
        """The identity a request is counted under."""
        if self._header is not None:
            value = request.header.get(self._header)
            if value is not None and value != "":
                return "h:" + _bounded(str(value))
        return "ip:" + _bounded(str(getattr(connection, "remote_ip", "") or "unknown"))

    async def hit(self, client: str) -> tuple[int, int]:
        """Count one request of ``client``; return (count in window, ms left in window)."""
        key = self._prefix + (slot_tag(client) + client if self._cluster else client)
        count, ttl = await self._script(keys=[key], args=[self._window_ms])
        return int(count), int(ttl)

    async def __call__(self, request: Request, connection: Any) -> Response | None:
        try:
            count, ttl_ms = await bounded(
                self.hit(self.client_id(request, connection)), self.timeout
            )
        except (RedisError, OSError, TimeoutError) as error:
            if self.fail_open:
                logger.warning("redis-rate-limit: Redis unavailable, request allowed: %s", error)
                return None
            return _refusal(request, "rate_limit_unavailable", "rate limiter unavailable", 1)
        if count <= self.limit:
            return None
        retry_after = max(1, math.ceil(ttl_ms / 1000))
        return _refusal(
            request,
            "rate_limited",
            f"more than {self.limit} requests in {self.window:g} s; retry after {retry_after} s",
            retry_after,
        )

    async def aclose(self) -> None:
        """Release the Redis connections."""
        await self._client.aclose()
        if self._pool is not None:
            await self._pool.disconnect()


def _bounded(value: str) -> str:
    if len(value) <= _MAX_KEY_PART:
        return value
    return "sha1:" + hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()


def _refusal(request: Request, code: str, message: str, retry_after: int) -> Response:
    return Response.create(
        request_id=request.request_id,
        header={"error": code, "retry_after": str(retry_after)},
        payload=orjson.dumps(
            {"code": code, "message": message, "retry_after": retry_after}
        ).decode(),
        method=request.method,
    )


def redis_rate_limit(**options: Any) -> RedisRateLimit:
    """The ``redis-rate-limit`` middleware factory (``registry.add`` target)."""
    return RedisRateLimit(**options)
