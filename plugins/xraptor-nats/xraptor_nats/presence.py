"""Presence on NATS (the antenna's optional presence capability): a JetStream key-value
bucket.

One bucket per antenna configuration (option ``presence_bucket``, by default the
subject prefix with ``_presence``), kept in memory, with one revision per key. A
member's key is ``<room token>.<member token>`` (tokens as for subjects,
:func:`xraptor_nats.subjects.channel_token`), its value the JSON array ``[member,
info]``; a room's members are read with one short-lived pull consumer of the
bucket's ``<room token>.*`` keys, last value of each (:mod:`xraptor_nats.pull`). A
member is live while the time JetStream stored its last put (the server's clock) is
less than ``presence_ttl`` ago, by this host's clock (so hosts and server must agree
on the time within a fraction of it); live processes put their members again every
third of that. An expired member is taken out with a delete that expects its last
revision, so one process only wins it (and announces its leave). nats-server before
2.11 has no time to live per message: the bucket's ``max_age``, three times
``presence_ttl``, drops what nobody took out (a room whose processes all died). The
server needs JetStream (``nats-server -js``); only rooms with presence use it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Coroutine, Mapping
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from xraptor.antenna import AntennaError, AntennaUnavailable

from .errors import UNAVAILABLE
from .pull import read_stored
from .subjects import channel_token

logger = logging.getLogger("xraptor_nats")

T = TypeVar("T")

#: the bucket keeps entries this many presence_ttl (then JetStream drops them: a room
#: whose processes all died), so that expired members can be taken out, and announced
_KEEP = 3
#: JetStream's error codes for "wrong last sequence"
_WRONG_REVISION = (10071, 10164)

#: reads of a room's entries tried before one is complete
_READS = 3
#: puts sent before their acknowledgments are awaited
_BATCH = 256


def bucket_name(subject_prefix: str) -> str:
    """The default bucket of an antenna whose subjects start with ``subject_prefix``."""
    return subject_prefix.replace(".", "_") + "_presence"


def member_subject(room: str, member: str) -> str:
    """The key of ``member`` in ``room``."""
    return f"{channel_token(room)}.{channel_token(member)}"


class NatsPresence:
    """The presence bucket of one antenna.

    :param bucket: the bucket's name (``A-Z a-z 0-9 _ -``)
    :param timeout: seconds a call may take before it raises ``AntennaUnavailable``
    """

    def __init__(self, bucket: str, timeout: float) -> None:
        self.bucket = bucket
        self.timeout = timeout
        self._kv: KeyValue | None = None
        self._client: Client | None = None

    async def put(self, nc: Client, room: str, members: Mapping[str, str], ttl: float) -> None:
        async def put() -> None:
            kv = await self._bucket(nc, ttl)
            items = list(members.items())
            for start in range(0, len(items), _BATCH):
                await asyncio.gather(
                    *(
                        kv.put(member_subject(room, member), orjson.dumps([member, info]))
                        for member, info in items[start : start + _BATCH]
                    )
                )

        await self._bounded(put())

    async def remove(self, nc: Client, room: str, members: Collection[str], ttl: float) -> None:
        async def purge() -> None:
            kv = await self._bucket(nc, ttl)
            await asyncio.gather(*(kv.purge(member_subject(room, member)) for member in members))

        await self._bounded(purge())

    async def read(self, nc: Client, room: str, ttl: float) -> dict[str, str]:
        async def read() -> dict[str, str]:
            now = time.time()
            await self._bucket(nc, ttl)
            entries = await self._entries(nc, room)
            return {member: info for member, info, put, _ in entries if put + ttl > now}

        return await self._bounded(read())

    async def expire(self, nc: Client, room: str, ttl: float) -> dict[str, str]:
        async def expire() -> dict[str, str]:
            kv = await self._bucket(nc, ttl)
            now = time.time()
            entries = await self._entries(nc, room)
            expired = [entry for entry in entries if entry[2] + ttl <= now]
            claims = await asyncio.gather(
                *(self._claim(kv, room, member, revision) for member, _, _, revision in expired)
            )
            won = zip(expired, claims, strict=True)
            return {member: info for (member, info, _, _), claimed in won if claimed}

        return await self._bounded(expire())

    async def _entries(self, nc: Client, room: str) -> list[tuple[str, str, float, int]]:
        """The room's entries: (member, info, when it was put (the server's clock), revision)."""
        config = ConsumerConfig(
            filter_subject=f"$KV.{self.bucket}.{channel_token(room)}.*",
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        js = nc.jetstream(timeout=self.timeout)
        for _ in range(_READS):
            found = await read_stored(nc, js, f"KV_{self.bucket}", config, _entry, self.timeout)
            if found is not None:
                return found
        # (members were removed while each read was under way)
        raise AntennaUnavailable(f"the presence of room {room[:64]!r} kept changing while read")

    async def _claim(self, kv: KeyValue, room: str, member: str, revision: int) -> bool:
        """Delete ``member`` if it is still at ``revision`` (nobody set it again, and no
        other process took it out first): whether this call did."""
        try:
            await kv.delete(member_subject(room, member), last=revision)
        except nats.js.errors.APIError as error:
            if error.err_code in _WRONG_REVISION:
                return False
            raise
        return True

    async def _bucket(self, nc: Client, ttl: float) -> KeyValue:
        if self._kv is not None and self._client is nc:
            return self._kv
        js = nc.jetstream(timeout=self.timeout)
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket, history=1, ttl=ttl * _KEEP, storage=StorageType.MEMORY
                )
            )
        else:
            status = await kv.status()
            if status.ttl is not None and status.ttl < ttl * 2:
                logger.warning(
                    "NATS presence bucket %r keeps entries %s s, too short for "
                    "presence_ttl=%s s (it was made with a shorter one; delete it to change it)",
                    self.bucket,
                    status.ttl,
                    ttl,
                )
        self._kv, self._client = kv, nc
        return kv

    async def _bounded(self, work: Coroutine[Any, Any, T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await work
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as error:
            raise AntennaError(
                "presence on NATS keeps its members in a JetStream key-value bucket: enable "
                f"JetStream on the server (nats-server -js); {type(error).__name__}: {error}"
            ) from error
        except UNAVAILABLE as error:
            raise AntennaUnavailable(
                f"NATS presence failed: {type(error).__name__}: {error}"
            ) from error
        except nats.errors.Error as error:
            raise AntennaError(f"NATS refused a presence request: {error}") from error


def _entry(message: Msg) -> tuple[str, str, float, int] | None:
    """A stored member (``None``: a delete or purge marker)."""
    headers = message.headers
    if not message.data or (headers and headers.get("KV-Operation") in ("DEL", "PURGE")):
        return None
    metadata = message.metadata
    member, info = orjson.loads(message.data)
    return member, info, metadata.timestamp.timestamp(), metadata.sequence.stream
