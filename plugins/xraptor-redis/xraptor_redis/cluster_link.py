"""One subscriber connection to one master of a Redis Cluster, and its health checks.

A :class:`ShardLink` is a plain redis-py connection (no redis-py pub/sub object, no
retries: the antenna's recovery task decides what a loss means) with the channels
that master confirmed. :func:`ping_any` is the antenna's health probe over every
link; :meth:`ShardLink.probe` / :meth:`ShardLink.unanswered` are the silence checks
of the watchdog and of the recovery task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from redis.asyncio.connection import Connection

from xraptor.antenna import AntennaUnavailable

from ._bounded import bounded
from .cluster import UNREACHABLE, Address, ClusterConfig, fmt
from .pongs import Pongs

logger = logging.getLogger("xraptor_redis")


class ShardLink:
    """The subscriber connection to one master, and the channels Redis confirmed on it."""

    def __init__(self, address: Address, connection: Connection, now: float) -> None:
        self.address = address
        self.connection = connection
        #: channels whose SSUBSCRIBE this master confirmed (names as the app knows them)
        self.channels: set[str] = set()
        #: our own SUNSUBSCRIBEs not confirmed yet, per channel
        self.unsubscribing: dict[str, int] = {}
        #: health-probe PINGs waiting for the reader to see their answer
        self.pongs = Pongs()
        self.reader: asyncio.Task[None] | None = None
        self.alive = True
        #: loop time of the last thing read
        self.last_read = now
        #: when a silence check sent its PING (None: no PING outstanding)
        self.probed_at: float | None = None

    @classmethod
    async def open(cls, config: ClusterConfig, address: Address, timeout: float) -> ShardLink:
        """Connect to ``address`` (within ``timeout``); the caller starts the reader.

        :raises: what connecting raised (the connection is released first)
        """
        connection = config.connection(address, connect_timeout=timeout)
        try:
            await bounded(connection.connect(), timeout + 1)  # type: ignore[no-untyped-call]
        except BaseException:
            with contextlib.suppress(Exception):
                await bounded(connection.disconnect(), timeout)
            raise
        return cls(address, connection, asyncio.get_running_loop().time())

    @property
    def usable(self) -> bool:
        return self.alive and self.connection.is_connected

    async def close(self, timeout: float) -> None:
        """Drop the connection (a reader waiting on it then fails); never raises."""
        try:
            await bounded(self.connection.disconnect(nowait=True), timeout)
        except Exception:  # closing a broken connection must not stop recovery
            logger.debug("closing a redis cluster link failed", exc_info=True)

    async def probe(self, timeout: float) -> None:
        """Send a silence check's ``PING`` (its answer moves ``last_read``)."""
        self.probed_at = asyncio.get_running_loop().time()
        with contextlib.suppress(*UNREACHABLE):
            await bounded(self.connection.send_command("PING"), timeout)

    def unanswered(self) -> float | None:
        """Seconds since a probe nothing was read after, else None."""
        if self.probed_at is None or self.last_read >= self.probed_at:
            return None
        return asyncio.get_running_loop().time() - self.probed_at


async def ping_any(links: Iterable[ShardLink], where: str) -> None:
    """``PING`` on every usable link; return once one answered (the cluster is reachable).

    :raises AntennaUnavailable: no link is up, or none answered
    """
    usable = [link for link in links if link.usable]
    if not usable:
        raise AntennaUnavailable(f"no subscriber connection to {where} is up")
    waits: list[tuple[ShardLink, str, asyncio.Future[None]]] = []
    try:
        for link in usable:
            token, answered = link.pongs.expect()
            waits.append((link, token, answered))
            with contextlib.suppress(*UNREACHABLE):
                await link.connection.send_command("PING", token)
        pending = {answered for _, _, answered in waits}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not future.exception() for future in done):
                return
        raise AntennaUnavailable(f"no node of {where} answered PING")
    finally:
        for link, token, _ in waits:
            link.pongs.forget(token)


async def watch_silence(links: dict[Address, ShardLink], interval: float) -> None:
    """Drop a link that went silent (a frozen node, half-open TCP), forever: after
    ``interval`` s of silence it gets a PING, and when nothing came back an interval
    later, it is disconnected (its reader then reports it lost)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        for link in list(links.values()):
            if not link.usable:
                continue
            waited = link.unanswered()
            if waited is not None:
                if waited >= interval:
                    logger.warning(
                        "redis cluster: no answer from %s to PING within %.1f s; dropping",
                        fmt(link.address),
                        interval,
                    )
                    await link.close(interval)
                continue
            link.probed_at = None
            if loop.time() - link.last_read >= interval:
                await link.probe(interval)
