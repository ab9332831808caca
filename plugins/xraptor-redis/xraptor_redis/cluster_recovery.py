"""How a cluster antenna's subscriptions follow the cluster's topology: the recovery task.

:class:`TopologyFollower` is the half of
:class:`~xraptor_redis.cluster_subscriber.ClusterSubscriber` that runs in its recovery
task. Woken when a link is lost, when Redis unsubscribed a channel (its slot moved)
or answered ``MOVED``, when a publish failed, and every ``topology_refresh_interval``
seconds unasked, it reads the topology again (``CLUSTER SLOTS`` from any node that
answers), opens links to masters it has none to, closes idle links to nodes that lost
their slots (a link still carrying channels is PINGed: a node that answers unsubscribes
them itself, one that does not is dropped), and subscribes each homeless channel on
its slot's master. Until all is in place it tries again with a backoff capped at
``follow_cap`` (at most a second), so a promoted replica is found within about that.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from xraptor.antenna import Antenna

from .cluster import Address, Topology, fmt

if TYPE_CHECKING:
    from .cluster_link import ShardLink

logger = logging.getLogger("xraptor_redis")


class TopologyFollower:
    """The recovery task's half of the cluster subscriber (a mixin: the state is the
    subscriber's, declared here)."""

    _antenna: Antenna
    topology: Topology
    where: str
    subscribe_timeout: float
    reconnect_min_delay: float
    follow_cap: float
    refresh_interval: float | None
    reconnects: int
    _links: dict[Address, ShardLink]
    _dead: list[ShardLink]
    _wanted: dict[str, ShardLink | None]
    _refresh: bool
    _wake: asyncio.Event | None
    #: called after each topology read (the antenna prunes its publishers)
    on_topology: Callable[[], Awaitable[None]] | None = None

    async def _open(self, address: Address) -> ShardLink:
        raise NotImplementedError

    async def _home(self, channels: list[str]) -> None:
        raise NotImplementedError

    # ----- recovery ----------------------------------------------------------------

    def _wake_recovery(self, refresh: bool) -> None:
        if refresh:
            self._refresh = True
        if self._wake is not None:
            self._wake.set()

    def topology_suspect(self) -> None:
        """Someone (a publish) saw a node fail or a MOVED: read the topology again."""
        self._wake_recovery(refresh=True)

    def _settled(self) -> bool:
        return (
            not self._refresh
            and not self._dead
            and all(
                address in self._links and self._links[address].usable
                for address in self.topology.masters
            )
            and all(home is not None for home in self._wanted.values())
            # a link to a node that lost its slots, still carrying channels: watched
            and all(address in self.topology.masters for address in self._links)
        )

    async def _recover_forever(self) -> None:
        assert self._wake is not None
        delay = self.reconnect_min_delay
        loop = asyncio.get_running_loop()
        while True:
            # now and then, unasked: a frozen or cut-off master is only seen so. A timer,
            # not asyncio.timeout: on Python 3.11 a timeout expiring as close() cancels
            # the task turns the cancellation into a TimeoutError, and the task lives on
            tick = None
            if self.refresh_interval is not None:
                tick = loop.call_later(self.refresh_interval, self._wake_recovery, True)
            try:
                await self._wake.wait()
            finally:
                if tick is not None:
                    tick.cancel()
            self._wake.clear()
            try:
                await self._recover()
            except Exception as error:
                self._refresh = True
                logger.info(
                    "redis cluster: recovery step failed (%s: %s); next try in about %.2f s",
                    type(error).__name__,
                    error,
                    delay,
                )
            if self._settled():
                delay = self.reconnect_min_delay
                continue
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.follow_cap)
            self._wake.set()

    async def _recover(self) -> None:
        dead, self._dead = self._dead, []
        for link in dead:
            await link.close(self.subscribe_timeout)
        if self._refresh:
            self._refresh = False
            await self.topology.refresh()
            if self.on_topology is not None:
                await self.on_topology()
        masters = set(self.topology.masters)
        homes = {id(home) for home in self._wanted.values()}
        for address, link in list(self._links.items()):
            # a link to a node that is no longer a master is closed once idle: a demoted
            # master unsubscribes the channels itself (sunsubscribe), and one answer of
            # CLUSTER SLOTS may be older than what that node knows
            if address not in masters and id(link) not in homes:
                del self._links[address]
                link.alive = False
                if link.reader is not None:
                    link.reader.cancel()
                await link.close(self.subscribe_timeout)
            elif address not in masters:
                await self._check_demoted(link)
        missing = [address for address in masters if address not in self._links]
        opened = await asyncio.gather(*(self._open(a) for a in missing), return_exceptions=True)
        for address, result in zip(missing, opened, strict=True):
            if isinstance(result, BaseException):
                self._refresh = True  # a replica may be taking over
                logger.debug(
                    "redis cluster: cannot reach master %s (%s: %s)",
                    fmt(address),
                    type(result).__name__,
                    result,
                )
            else:
                self.reconnects += 1
        if self._antenna.connection_state == "down" and any(
            link.usable for link in self._links.values()
        ):
            logger.warning("redis cluster: %s reachable again", self.where)
            self._antenna.set_state("up")
        homeless = [channel for channel, home in self._wanted.items() if home is None]
        if homeless:
            await self._home(homeless)

    async def _check_demoted(self, link: ShardLink) -> None:
        """``link``'s node lost its slots, as the cluster says, and still carries our
        channels: a node that answers will unsubscribe them itself (or the topology
        answer was stale); one that does not answer a PING within the follow cap is
        frozen or cut off (its replica took over), so the link is dropped and its
        channels move with a gap."""
        waited = link.unanswered()
        if waited is not None:
            if waited >= self.follow_cap:
                logger.warning(
                    "redis cluster: %s lost its slots and does not answer; dropping it",
                    fmt(link.address),
                )
                await link.close(self.subscribe_timeout)
            return
        if link.probed_at is not None:
            self._refresh = True  # it answered: ask the cluster again, it may be a stale view
        await link.probe(self.follow_cap)
