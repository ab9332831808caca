"""Presence on NATS (the antenna's optional presence capability): a JetStream
key-value bucket.

One bucket per antenna configuration (option ``presence_bucket``, by default the
subject prefix with ``_presence``), kept in memory, with one revision per key and a
``max_age`` of ``presence_ttl``: JetStream drops a member's entry ``presence_ttl``
seconds after it was last put, and live processes put their members again every
third of that. A member's key is ``<room token>.<member token>`` (tokens as for
subjects, :func:`xraptor_nats.subjects.channel_token`), its value the JSON array
``[member, info]``; a room's members are listed with a key-value watch of
``<room token>.*`` (one short-lived ordered consumer per listing). The server needs
JetStream (``nats-server -js``); only rooms with presence use it.

nats-server before 2.11 has no time to live per message, so the bucket's ``max_age``
is the one time to live of every room: a bucket made with another ``presence_ttl``
keeps its own (a warning says so).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Coroutine, Mapping
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from xraptor.antenna import AntennaError, AntennaUnavailable

from .subjects import channel_token

logger = logging.getLogger("xraptor_nats")

T = TypeVar("T")

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
            kv = await self._bucket(nc, ttl)
            watcher = await kv.watch(f"{channel_token(room)}.*", ignore_deletes=True)
            found: dict[str, str] = {}
            try:
                async for entry in watcher:
                    if entry is None:  # the end of what the bucket holds now
                        break
                    if entry.value:
                        member, info = orjson.loads(entry.value)
                        found[member] = info
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
            return found

        return await self._bounded(read())

    async def _bucket(self, nc: Client, ttl: float) -> KeyValue:
        if self._kv is not None and self._client is nc:
            return self._kv
        js = nc.jetstream(timeout=self.timeout)
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=self.bucket, history=1, ttl=ttl, storage=StorageType.MEMORY)
            )
        else:
            status = await kv.status()
            if status.ttl is not None and abs(status.ttl - ttl) > 0.001:
                logger.warning(
                    "NATS presence bucket %r expires members after %s s, not presence_ttl=%s s "
                    "(it was made with another presence_ttl; delete it to change it)",
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
        except _UNAVAILABLE as error:
            raise AntennaUnavailable(
                f"NATS presence failed: {type(error).__name__}: {error}"
            ) from error
        except nats.errors.Error as error:
            raise AntennaError(f"NATS refused a presence request: {error}") from error


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.TimeoutError,
    TimeoutError,
    OSError,
)
