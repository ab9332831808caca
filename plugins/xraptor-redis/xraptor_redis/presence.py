"""Presence on Redis (the antenna's optional presence capability).

Each room has two keys, whose names hold a hash of the room's id in a hash tag so
that Redis Cluster would keep both in one slot: ``<prefix>{<hash>}:z``, a sorted set
of member keys scored by their expiry (milliseconds on Redis' own clock, so hosts
need not agree on the time), and ``<prefix>{<hash>}:h``, a hash of their infos.
Redis 7.0 has no expiry per hash field, hence the sorted set: setting members writes
both in one script, listing reads the members whose expiry is ahead, expiring takes
the others out of both (a script: one caller gets each), and both keys expire with
their last member, so an abandoned room leaves nothing.

On a Redis Cluster the scripts run on the master of the slot of the room's keys (their
tag), following ``MOVED`` and ``ASK`` (:mod:`xraptor_redis.cluster_commands`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xraptor.antenna import AntennaError, AntennaUnavailable

from ._bounded import bounded

DEFAULT_PREFIX = "xraptor:presence:"

#: KEYS: zset, hash. ARGV: ttl (ms), then member, info pairs
_SET = """
local t = redis.call('TIME')
local ttl = tonumber(ARGV[1])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
local keep = math.max(ttl, redis.call('PTTL', KEYS[1]))
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return 1
"""

#: KEYS: zset, hash. The live members and their infos, flat
_LIST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE')
local flat = {}
for i = 1, #live, 500 do
  local chunk = {unpack(live, i, math.min(i + 499, #live))}
  local infos = redis.call('HMGET', KEYS[2], unpack(chunk))
  for j = 1, #chunk do
    if infos[j] then
      flat[#flat + 1] = chunk[j]
      flat[#flat + 1] = infos[j]
    end
  end
end
return flat
"""

#: KEYS: zset, hash. Takes the expired members out; returns them and their infos, flat
_EXPIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE')
local flat = {}
for i = 1, #gone, 500 do
  local chunk = {unpack(gone, i, math.min(i + 499, #gone))}
  local infos = redis.call('HMGET', KEYS[2], unpack(chunk))
  for j = 1, #chunk do
    flat[#flat + 1] = chunk[j]
    flat[#flat + 1] = infos[j] or 'null'
  end
  redis.call('ZREM', KEYS[1], unpack(chunk))
  redis.call('HDEL', KEYS[2], unpack(chunk))
end
return flat
"""

#: KEYS: zset, hash. ARGV: members
_REMOVE = """
for i = 1, #ARGV, 500 do
  local chunk = {unpack(ARGV, i, math.min(i + 499, #ARGV))}
  redis.call('ZREM', KEYS[1], unpack(chunk))
  redis.call('HDEL', KEYS[2], unpack(chunk))
end
return 1
"""

#: members per script call (each member is two arguments)
_BATCH = 1000


def room_keys(prefix: str, room: str) -> list[str]:
    """The sorted set and the hash that hold ``room``'s presence."""
    digest = hashlib.sha256(room.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return [f"{prefix}{{{digest}}}:z", f"{prefix}{{{digest}}}:h"]


#: runs a script: ``run(script, keys, args)`` returns its answer
ScriptRunner = Callable[[str, list[str], list[Any]], Awaitable[Any]]


class NodeScripts:
    """A :data:`ScriptRunner` on one Redis server: ``EVALSHA``, the script loaded first
    where Redis does not know it (a restart).

    :param client_of: the antenna's client (raises when the antenna is not connected)
    """

    def __init__(self, client_of: Callable[[], Redis]) -> None:
        self._client_of = client_of
        #: the scripts, registered once (their SHA1 computed once)
        self._scripts: dict[str, AsyncScript] = {}

    async def __call__(self, script: str, keys: list[str], args: list[Any]) -> Any:
        client = self._client_of()
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = client.register_script(script)
        return await registered(keys=keys, args=args, client=client)


class RedisPresence:
    """The presence scripts of one antenna.

    :param prefix: what starts every presence key (option ``presence_prefix``)
    :param timeout: seconds a call may take before it raises ``AntennaUnavailable``
    :param where: the server as error messages name it (no credentials)
    :param run: what runs the scripts: :class:`NodeScripts` on one server, the
        slot-routing :meth:`~xraptor_redis.cluster_commands.SlotCommands.script` on a
        Redis Cluster (a room's two keys share a slot, so its scripts run on that
        slot's master)
    """

    def __init__(self, prefix: str, timeout: float, where: str, run: ScriptRunner) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.where = where
        self.run = run

    async def put(self, room: str, members: Mapping[str, str], ttl: float) -> None:
        keys = room_keys(self.prefix, room)
        pairs = list(members.items())
        for start in range(0, len(pairs), _BATCH):
            args: list[str | int] = [max(1, round(ttl * 1000))]
            for member, info in pairs[start : start + _BATCH]:
                args += (member, info)
            await self._run(_SET, keys, args)

    async def remove(self, room: str, members: Collection[str]) -> None:
        if members:
            await self._run(_REMOVE, room_keys(self.prefix, room), list(members))

    async def read(self, room: str) -> dict[str, str]:
        return _pairs(await self._run(_LIST, room_keys(self.prefix, room), []))

    async def expire(self, room: str) -> dict[str, str]:
        return _pairs(await self._run(_EXPIRE, room_keys(self.prefix, room), []))

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await bounded(self.run(script, keys, args), self.timeout)
        except _UNREACHABLE as error:
            raise AntennaUnavailable(
                f"redis presence failed ({self.where}): {type(error).__name__}: {error}"
            ) from error
        except RedisError as error:
            raise AntennaError(f"redis refused a presence script: {error}") from error


_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))
