"""Publishing to a Redis Cluster: one ordered, pipelining publisher per master.

Each master gets a :class:`~xraptor_redis.publisher.Publisher` of its own (one task,
one queue, ``SPUBLISH`` pipelined in batches over a small pool to that node), so a
channel's messages keep their order (a channel lives on one master) and a master
that is down holds up only the publishes of its own slots.

Written on our own per-node connections rather than redis-py's ``RedisCluster``
client: that client sends concurrent commands over several connections (losing
the order of concurrent publishes to a channel), and while a master is down it
retries and re-reads the topology inside the call, so one dead shard would stall a
shared queue. Here a publish to a dead master fails at once with
:class:`~xraptor.AntennaUnavailable` (at most once), and the topology is followed
by the antenna (:mod:`xraptor_redis.cluster_subscriber`).

A ``MOVED`` reply (the slot changed hands) updates the topology and the publish is
sent once more, to the new owner; a publish in flight while its slot moves may so
overtake an earlier one of the same channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.exceptions import RedisError, ResponseError

from xraptor.antenna import AntennaError, AntennaUnavailable

from ._bounded import bounded
from .cluster import UNREACHABLE, Address, Topology, fmt, moved_to, route
from .publisher import Publisher, _Item


class ShardPublisher(Publisher):
    """The publisher of one master: ``SPUBLISH`` of tagged channels, ``MOVED`` followed once."""

    def __init__(
        self,
        topology: Topology,
        address: Address,
        *,
        timeout: float,
        max_pending: int,
        on_lost: Callable[[], None],
    ) -> None:
        super().__init__(
            topology.client(address), timeout=timeout, max_pending=max_pending, where=fmt(address)
        )
        self.topology = topology
        self.address = address
        self._on_lost = on_lost

    def stop(self) -> asyncio.Task[None] | None:
        """Cancel the task of this publisher (idle: nothing queued); return it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def _send(self, batch: list[_Item]) -> None:
        results: list[object]
        try:
            if len(batch) == 1:  # no pipeline for one (its set-up costs more than the send)
                try:
                    results = [await self.client.spublish(route(batch[0][0])[0], batch[0][1])]
                except ResponseError as refused:
                    results = [refused]
            else:
                pipe = self.client.pipeline(transaction=False)
                for channel, message, *_ in batch:  # never a script call here
                    pipe.spublish(route(channel)[0], message)
                results = await pipe.execute(raise_on_error=False)
        except UNREACHABLE as failure:
            self._on_lost()
            error = AntennaUnavailable(
                f"redis publish to {self.where} failed: {type(failure).__name__}: {failure}"
            )
            results = [error] * len(batch)
        except RedisError as failure:
            results = [AntennaError(f"redis refused the publish: {failure}")] * len(batch)
        for (channel, message, future, _), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, ResponseError) and moved_to(result) is not None:
                result = await self._redirect(channel, message, result)
            if isinstance(result, AntennaError):
                future.set_exception(result)
            elif isinstance(result, Exception):
                future.set_exception(AntennaError(f"redis refused the publish: {result}"))
            else:
                future.set_result(None)

    async def _redirect(self, channel: str, message: str, moved: ResponseError) -> object:
        """Send once more to the node a ``MOVED`` reply named; the outcome, or the error."""
        target = moved_to(moved)
        assert target is not None
        slot, address = target
        self.topology.learn(slot, address)
        self._on_lost()  # the rest of the topology may have changed too
        try:
            return await bounded(
                self.topology.client(address).spublish(route(channel)[0], message), self.timeout
            )
        except UNREACHABLE as failure:
            return AntennaUnavailable(
                f"redis publish to {fmt(address)} (moved) failed: {type(failure).__name__}: "
                f"{failure}"
            )
        except RedisError as failure:
            return AntennaError(f"redis refused the publish: {failure}")


class ClusterPublisher:
    """Routes each publish to the publisher of the master that serves its channel."""

    def __init__(
        self,
        topology: Topology,
        *,
        timeout: float,
        max_pending: int,
        on_lost: Callable[[], None],
    ) -> None:
        self.topology = topology
        self.timeout = timeout
        self.max_pending = max_pending
        self._on_lost = on_lost
        self._publishers: dict[Address, ShardPublisher] = {}
        self._closed = False
        #: the tasks of pruned publishers, until they ended
        self._stopping: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Publishes waiting to be sent, on every node."""
        return sum(len(publisher) for publisher in self._publishers.values())

    async def publish(self, channel: str, message: str) -> None:
        if self._closed:
            raise AntennaError("the redis antenna is not connected")
        address = self.topology.owner(route(channel)[1])
        if address is None:
            raise AntennaUnavailable(
                f"no master of the Redis Cluster {self.topology.config.where} serves the slot "
                "of this channel now"
            )
        publisher = self._publishers.get(address)
        if publisher is None:
            publisher = self._publishers[address] = ShardPublisher(
                self.topology,
                address,
                timeout=self.timeout,
                max_pending=self.max_pending,
                on_lost=self._on_lost,
            )
            publisher.start()
        await publisher.publish(channel, message)

    async def prune(self) -> None:
        """Close the idle publishers of nodes that are no longer masters, and the clients
        of nodes the cluster no longer names (bounded memory, however often it changes)."""
        masters = set(self.topology.masters)
        for address, publisher in list(self._publishers.items()):
            if address not in masters and not len(publisher):
                del self._publishers[address]
                # cancelled, not awaited here: the caller (the recovery task) must not
                # wait on a send stuck on a frozen node, nor lose its own cancellation
                stopping = publisher.stop()
                if stopping is not None:
                    self._stopping.add(stopping)
                    stopping.add_done_callback(self._stopping.discard)
        await self.topology.prune(keep=set(self._publishers))

    async def close(self) -> None:
        self._closed = True
        publishers, self._publishers = self._publishers, {}
        for publisher in publishers.values():
            await publisher.close()
        if self._stopping:
            await asyncio.wait(self._stopping, timeout=self.timeout + 1)
