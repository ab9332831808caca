"""Room history on Redis: a Redis Stream per room, appended and published in one step.

Keys (``prefix`` is the antenna's ``history_prefix`` option, default ``xraptor:history``):

* ``<prefix>:{<tag>}:s:<room id>``: the room's stream, one entry per message (field ``m``);
* ``<prefix>:{<tag>}:e:<room id>``: a hash beside it: ``e``, the epoch, and ``t``, the
  history's time-to-live in milliseconds (``0``: none).

``<tag>`` is 16 hex digits of a BLAKE2b hash of the room id, in braces: Redis Cluster
puts both keys of a room in one slot (a script may only touch keys of one slot), and
rooms spread over the slots whatever their ids (which may hold braces themselves).

**Appending** is one Lua script (``EVALSHA``, loaded again on ``NOSCRIPT``): it reads
the epoch, draws a new one (offered by the caller, fresh random bytes) when either key
is missing (a first message, or a history Redis lost: a restart without persistence, an
expiry, an eviction), ``XADD``\\ s the message trimming to exactly ``size`` entries
(``MAXLEN =``; not ``~``: the room must keep exactly its last ``size`` messages, so that
recovery succeeds exactly when the contract says; trimming one entry per append removes
it from the stream's first node, which is cheap), trims entries older than the ttl
(``XTRIM MINID``, by Redis's clock), sets both keys to expire after the ttl (an idle room
frees its memory), and ``PUBLISH``\\ es the message framed with its position. Whoever
receives the message finds it in the history already; no other client's command runs
between the append and the publish.

**Redis Cluster**: the script runs on the master of the room's slot (:data:`APPEND_SHARDED`,
sent by :mod:`xraptor_redis.cluster_publisher`) and publishes with ``SPUBLISH`` to the
room's sharded channel ``{<tag>}<room id>`` (:func:`xraptor_redis.cluster.route`): the same
tag as the keys, so the keys and the channel share one slot, as a script needs (a plain
``PUBLISH`` would go to every node of the cluster, and reach no ``SSUBSCRIBE``\\ r).

**Offsets**: a stream id ``<ms>-<seq>`` is the offset ``ms * 1_000_000 + seq``. Stream ids
grow with each append, so offsets do too. To keep the mapping one-to-one, the script
never lets ``seq`` reach 1,000,000 (it happens only if Redis's clock stood still or went
back for that many appends): it moves such an entry to ``<ms + 1>-0``. An offset stays
below 10^20 (the 20 digits a position may have) until the year 5138.

**Pub/sub payload** of a room with history: the byte ``0xFF``, then ``<epoch> <stream
id>\\n<message>`` in UTF-8. A plain message (UTF-8 text) never holds the byte 0xFF, so
the subscriber tells the two apart by the first byte alone, without knowing which rooms
keep history (:data:`MARK`, :meth:`RedisHistory.decode`), and hands a positioned message
to :meth:`~xraptor.Antenna.deliver_at`. Other services subscribed to such a room's
channel see that framing.

**Reading** after a position is one read-only script too: the epoch must match, the entry
at the position must still be there (and not older than the ttl), then everything after it
(``XRANGE`` from the exclusive id) comes back in one consistent snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from xraptor.history import HistoryEntry, HistoryPolicy, Position

from .cluster import slot_tag

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from xraptor.antenna import Antenna

    from .publisher import Publisher

logger = logging.getLogger("xraptor_redis")

DEFAULT_PREFIX = "xraptor:history"
#: a stream id's ``seq`` stays below this, so that ``ms * SEQ_LIMIT + seq`` is one-to-one
SEQ_LIMIT = 1_000_000
#: the first character of a positioned payload as the subscriber reads it: the byte 0xFF
#: (never in UTF-8 text) decoded with ``surrogateescape``
MARK = "\udcff"
#: the keys of the scripts: the stream, then the epoch hash
KEYS = 2
#: what a cluster antenna publishes to a room's subscribers when an append ran on a
#: node they are not subscribed on (a slot being migrated): "the history went on, read
#: it" (the byte 0xFF, then a newline; no position); the subscriber reports a gap, and
#: rooms with history catch up from it
ADVANCED = b"\xff\n"

#: KEYS: stream, meta. ARGV: channel, message, size, ttl in ms (0: none), a fresh epoch.
#: Returns "<epoch> <stream id>" (one string: the cheapest answer to parse).
APPEND = """
local stream, meta = KEYS[1], KEYS[2]
local size, ttl = ARGV[3], tonumber(ARGV[4])
local found = redis.call('HMGET', meta, 'e', 'f')
local epoch = found[1]
local first = redis.call('EXISTS', stream) == 0
if not epoch or (first and found[2]) then
  epoch = ARGV[5]
  first = true
  redis.call('DEL', stream, meta)
  redis.call('HSET', meta, 'e', epoch, 't', ARGV[4])
elseif redis.call('HGET', meta, 't') ~= ARGV[4] then
  redis.call('HSET', meta, 't', ARGV[4])
  if ttl == 0 then
    redis.call('PERSIST', stream)
    redis.call('PERSIST', meta)
  end
end
local id = redis.call('XADD', stream, 'MAXLEN', '=', size, '*', 'm', ARGV[2])
local dash = string.find(id, '-', 1, true)
if tonumber(string.sub(id, dash + 1)) >= 1000000 then
  redis.call('XDEL', stream, id)
  local next_ms = string.format('%.0f', tonumber(string.sub(id, 1, dash - 1)) + 1)
  id = redis.call('XADD', stream, 'MAXLEN', '=', size, next_ms .. '-0', 'm', ARGV[2])
end
if first then
  redis.call('HSET', meta, 'f', id)
end
if ttl > 0 then
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ttl
  redis.call('XTRIM', stream, 'MINID', '=', string.format('%.0f', oldest))
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', meta, ttl)
end
local position = epoch .. ' ' .. id
redis.call('PUBLISH', ARGV[1], '\\255' .. position .. '\\n' .. ARGV[2])
return position
"""
#: :data:`APPEND` for Redis Cluster: ARGV[1] is the sharded channel, published with SPUBLISH
APPEND_SHARDED = APPEND.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
assert APPEND_SHARDED != APPEND

#: KEYS: stream, meta. ARGV: epoch, stream id of the position, its ms.
#: Returns the entries after the id, or nil when the position is not in the history: one
#: string of ``<stream id> <length>\n<message>`` per entry, the length in characters
#: (code points: UTF-8 bytes that do not continue a character), so that redis-py parses
#: one reply, not three per entry (its parser costs far more than the split below).
READ = """
local stream, meta = KEYS[1], KEYS[2]
local found = redis.call('HMGET', meta, 'e', 't', 'f')
if found[1] ~= ARGV[1] then return false end
local at, ms, from = ARGV[2], tonumber(ARGV[3]), '(' .. ARGV[2]
if at == '0-0' then
  if not found[3] then
    if redis.call('EXISTS', stream) == 1 then return false end
    return ''
  end
  at = found[3]
  ms = tonumber(string.match(at, '^[0-9]+'))
  from = '-'
end
if #redis.call('XRANGE', stream, at, at) == 0 then return false end
local ttl = tonumber(found[2]) or 0
if ttl > 0 then
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ttl
  if ms < oldest then return false end
end
local entries = redis.call('XRANGE', stream, from, '+')
local parts = {}
for i, entry in ipairs(entries) do
  local message = entry[2][2]
  local chars = #message
  if string.find(message, '[\\128-\\255]') then
    chars = select(2, string.gsub(message, '[^\\128-\\191]', ''))
  end
  parts[i] = entry[1] .. ' ' .. chars .. '\\n' .. message
end
return table.concat(parts)
"""

#: KEYS: stream, meta. ARGV: a fresh epoch, the lifetime in ms of an epoch drawn here.
#: Returns "<epoch> <stream id>": the newest entry's, else "0-0" in the epoch the next
#: append keeps (drawn now, with no ``f`` yet, when there is none or its stream was lost;
#: such an empty epoch lives a day more at each call).
NEWEST = """
local stream, meta = KEYS[1], KEYS[2]
local found = redis.call('HMGET', meta, 'e', 'f')
local epoch = found[1]
if epoch then
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last > 0 then return epoch .. ' ' .. last[1][1] end
  if not found[2] and redis.call('EXISTS', stream) == 0 then
    local left = redis.call('PTTL', meta)
    if left > 0 and left < tonumber(ARGV[2]) then redis.call('PEXPIRE', meta, ARGV[2]) end
    return epoch .. ' 0-0'
  end
end
epoch = ARGV[1]
redis.call('DEL', stream, meta)
redis.call('HSET', meta, 'e', epoch)
redis.call('PEXPIRE', meta, ARGV[2])
return epoch .. ' 0-0'
"""
#: milliseconds an epoch drawn for an empty history (:data:`NEWEST`) lives unless a
#: message is appended to it (then it lives as the history's ttl says)
EMPTY_EPOCH_MS = 86_400_000


def offset_of(stream_id: str) -> int:
    """The offset of a stream id ``"<ms>-<seq>"``."""
    ms, _, seq = stream_id.partition("-")
    return int(ms) * SEQ_LIMIT + int(seq)


def stream_id_of(offset: int) -> str:
    """The stream id of an offset (the inverse of :func:`offset_of`)."""
    ms, seq = divmod(offset, SEQ_LIMIT)
    return f"{ms}-{seq}"


def check_prefix(prefix: object) -> str:
    """``prefix`` when it is a usable key prefix.

    :raises ValueError: not a non-empty str, or it holds a brace (which would make
        Redis Cluster hash every room's keys to one slot)
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(
            f"redis antenna option 'history_prefix' must be a non-empty str, got {prefix!r}"
        )
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            "redis antenna option 'history_prefix' must not contain '{' or '}' "
            f"(the keys carry a hash tag of their own), got {prefix!r}"
        )
    return prefix


class RedisHistory:
    """The history of an antenna's rooms: key names, the append and the read.

    :param prefix: the key prefix (checked with :func:`check_prefix`)
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        self._read_sha = hashlib.sha1(READ.encode()).hexdigest()
        self._newest_sha = hashlib.sha1(NEWEST.encode()).hexdigest()

    def keys(self, channel: str) -> tuple[str, str]:
        """The stream key and the epoch key of ``channel``'s history (their hash tag is
        :func:`~xraptor_redis.cluster.slot_tag`'s, as the channel's in cluster mode)."""
        head = f"{self.prefix}:{slot_tag(channel)}"
        return f"{head}:s:{channel}", f"{head}:e:{channel}"

    async def append(
        self, publisher: Publisher, channel: str, message: str, policy: HistoryPolicy
    ) -> Position:
        """Append ``message`` to ``channel``'s history and publish it, in one script."""
        answer = await publisher.call(self.append_call(channel, message, policy))
        return self.appended_at(answer)

    def append_call(
        self, channel: str, message: str, policy: HistoryPolicy, published_as: str | None = None
    ) -> tuple[str, ...]:
        """The keys and arguments of the append script (:data:`APPEND`) for one message.

        :param published_as: the channel the script publishes to, when it is not
            ``channel`` (in cluster mode: the tagged sharded channel)
        """
        ttl_ms = 0 if policy.ttl is None else max(1, round(policy.ttl * 1000))
        stream, meta = self.keys(channel)
        fresh = secrets.token_hex(6)
        wire = channel if published_as is None else published_as
        return (stream, meta, wire, message, str(policy.size), str(ttl_ms), fresh)

    @staticmethod
    def appended_at(answer: object) -> Position:
        """The position the append script answered."""
        epoch, _, stream_id = str(answer).partition(" ")
        return Position(epoch, offset_of(stream_id))

    async def read(self, client: Redis, channel: str, after: Position) -> list[HistoryEntry] | None:
        """The entries of ``channel`` after ``after``, ``None`` when it is not in the history."""
        keys, args = self.read_call(channel, after)
        found = await _run(client, READ, self._read_sha, keys, args)
        return self.read_answer(after, found)

    async def newest(self, client: Redis, channel: str) -> Position:
        """Where ``channel``'s history stands (see :data:`NEWEST`)."""
        keys, args = self.newest_call(channel)
        return self.appended_at(await _run(client, NEWEST, self._newest_sha, keys, args))

    def newest_call(self, channel: str) -> tuple[list[str], list[str]]:
        """The keys and arguments of the newest-position script (:data:`NEWEST`)."""
        return list(self.keys(channel)), [secrets.token_hex(6), str(EMPTY_EPOCH_MS)]

    def read_call(self, channel: str, after: Position) -> tuple[list[str], list[str]]:
        """The keys and arguments of the read script (:data:`READ`)."""
        ms = after.offset // SEQ_LIMIT
        return list(self.keys(channel)), [after.epoch, stream_id_of(after.offset), str(ms)]

    @staticmethod
    def read_answer(after: Position, found: object) -> list[HistoryEntry] | None:
        """The entries the read script answered (``None``: ``after`` is not in the history)."""
        if found is None:
            return None
        return _entries(after.epoch, str(found))

    @staticmethod
    def decode(payload: str) -> tuple[Position, str] | None:
        """The position and message of a history room's pub/sub payload; ``None`` when
        it is not one (a payload starting with :data:`MARK` that is malformed)."""
        head, newline, message = payload[1:].partition("\n")
        epoch, space, stream_id = head.partition(" ")
        if not newline or not space:
            return None
        try:
            return Position(epoch, offset_of(stream_id)), message
        except ValueError:
            return None


def deliver_positioned(antenna: Antenna, channel: str, data: str) -> None:
    """Hand a received positioned payload (it starts with :data:`MARK`) to
    :meth:`~xraptor.Antenna.deliver_at`; a malformed one is dropped and logged."""
    decoded = RedisHistory.decode(data)
    if decoded is None:
        logger.warning(
            "redis antenna: dropped a malformed message of room %.64r (it starts like a "
            "message with history, without a position)",
            channel,
        )
        return
    position, message = decoded
    antenna.deliver_at(channel, message, position)


async def _run(client: Redis, script: str, sha: str, keys: list[str], args: list[str]) -> Any:
    """``EVALSHA`` of ``script``, loaded first when Redis does not know it (``NOSCRIPT``)."""
    try:
        return await client.evalsha(sha, KEYS, *keys, *args)
    except NoScriptError:
        await client.script_load(script)
        return await client.evalsha(sha, KEYS, *keys, *args)


def _entries(epoch: str, text: str) -> list[HistoryEntry]:
    """The entries the read script returned, concatenated (see :data:`READ`)."""
    entries = []
    at = 0
    end = len(text)
    while at < end:
        space = text.index(" ", at)
        newline = text.index("\n", space)
        start = newline + 1
        stop = start + int(text[space + 1 : newline])
        offset = offset_of(text[at:space])
        entries.append(HistoryEntry(Position(epoch, offset), text[start:stop]))
        at = stop
    return entries
