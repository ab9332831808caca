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

A room with history is published to by a call of the append script instead
(:data:`~xraptor_redis.history.APPEND_SHARDED`), queued in the same order, so the
master of the room's slot appends it to the room's stream and ``SPUBLISH``\\ es it
in one step (see :mod:`xraptor_redis.history`).

A ``MOVED`` reply (the slot changed hands) updates the topology and the publish is
sent once more, to the new owner; an ``ASK`` reply (the slot is being migrated and
the room's keys are on the importing node already) sends it once to that node,
after ``ASKING`` (:mod:`xraptor_redis.cluster_commands`). ``TRYAGAIN`` (a new room's
first append while its slot migrates, until the migration ends) sends it again for
:data:`~xraptor_redis.cluster_commands.TRYAGAIN_PATIENCE` seconds only, as the
master's other publishes wait meanwhile, then it fails with
:class:`~xraptor.AntennaUnavailable`. A publish in flight while its slot moves may so
overtake an earlier one of the same channel.

A plain ``SPUBLISH`` never gets ``ASK``: Redis serves sharded pub/sub on the slot's
owner while the slot migrates. An append does, once the room's keys were migrated;
the script then runs on the importing node, and its ``SPUBLISH`` reaches that node's
shard, where nobody subscribed yet (``SSUBSCRIBE`` stays on the owner too). So the
publisher then ``SPUBLISH``\\ es :data:`~xraptor_redis.history.ADVANCED` on the owner:
its subscribers report a gap for the room, and rooms with history catch up from it
(:func:`xraptor.recovery.catch_up`), in order, as after an outage. (Forwarding the
positioned message itself would not do: two processes' forwards may arrive in the
other order than their positions, and a room drops a message older than one it
delivered.) Should that publish be lost, the members catch up when the migration
ends: the old owner unsubscribes them, the antenna subscribes them on the new owner
and reports a gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

from xraptor.antenna import AntennaError, AntennaUnavailable

from ._bounded import bounded
from .cluster import UNREACHABLE, Address, Topology, fmt, is_ask, route
from .cluster_commands import TRYAGAIN_PATIENCE, Command, SlotCommands, evalsha, is_redirect
from .history import ADVANCED, APPEND_SHARDED, KEYS
from .publisher import Publisher, _Item

logger = logging.getLogger("xraptor_redis")


class ShardPublisher(Publisher):
    """The publisher of one master: ``SPUBLISH`` of tagged channels and calls of the
    history's append script (:data:`~xraptor_redis.history.APPEND_SHARDED`), pipelined
    in order; what comes back redirected (``MOVED``, ``ASK``, ``TRYAGAIN``, ``NOSCRIPT``)
    is sent on by :class:`~xraptor_redis.cluster_commands.SlotCommands`."""

    def __init__(
        self,
        topology: Topology,
        address: Address,
        *,
        timeout: float,
        max_pending: int,
        on_lost: Callable[[], None],
        commands: SlotCommands,
    ) -> None:
        super().__init__(
            topology.client(address),
            timeout=timeout,
            max_pending=max_pending,
            where=fmt(address),
            script=APPEND_SHARDED,
            script_keys=KEYS,
        )
        self.topology = topology
        self.address = address
        self._on_lost = on_lost
        self._commands = commands

    def stop(self) -> asyncio.Task[None] | None:
        """Cancel the task of this publisher (idle: nothing queued); return it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def _send(self, batch: list[_Item]) -> None:
        results: list[object]
        try:
            if len(batch) == 1 and batch[0][3] is None:  # no pipeline for one publish
                try:
                    results = [await self.client.spublish(route(batch[0][0])[0], batch[0][1])]
                except ResponseError as refused:
                    results = [refused]
            else:
                results = await self._pipeline(batch)
                again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if again:
                    # the node does not know the script (a promoted replica, a restart):
                    # loaded once, and those calls sent again, in their order
                    await self.client.script_load(APPEND_SHARDED)
                    retried = await self._pipeline([batch[i] for i in again])
                    for i, result in zip(again, retried, strict=True):
                        results[i] = result
        except UNREACHABLE as failure:
            self._on_lost()
            error = AntennaUnavailable(
                f"redis publish to {self.where} failed: {type(failure).__name__}: {failure}"
            )
            results = [error] * len(batch)
        except RedisError as failure:
            results = [AntennaError(f"redis refused the publish: {failure}")] * len(batch)
        for (channel, message, future, script), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, ResponseError) and is_redirect(result):
                result = await self._again(channel, message, script, result)
            if isinstance(result, AntennaError):
                future.set_exception(result)
            elif isinstance(result, Exception):
                future.set_exception(AntennaError(f"redis refused the publish: {result}"))
            else:
                future.set_result(result)

    async def _pipeline(self, batch: list[_Item]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for channel, message, _, script in batch:
            if script is None:
                pipe.spublish(route(channel)[0], message)
            else:
                pipe.evalsha(self._sha, self._script_keys, *script)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def _again(
        self, channel: str, message: str, script: tuple[str, ...] | None, answer: ResponseError
    ) -> object:
        """Send on a publish (or an append) whose answer was a redirect; the outcome, or
        the error."""
        if script is None:
            wire, slot = route(channel)
            command: Command = ("SPUBLISH", wire, message)
            source = None
        else:
            slot = key_slot(script[0].encode())
            keys = self._script_keys
            command = evalsha(APPEND_SHARDED, script[:keys], script[keys:])
            source = APPEND_SHARDED
        try:
            result = await bounded(
                self._commands.execute(
                    slot,
                    command,
                    source,
                    answer=answer,
                    sent_to=self.address,
                    patience=TRYAGAIN_PATIENCE,
                ),
                self.timeout,
            )
            if script is not None and is_ask(answer):
                await self._advanced(script[self._script_keys])  # ARGV[1]: the wire channel
            return result
        except AntennaError as failure:
            return failure
        except UNREACHABLE as failure:
            self._on_lost()
            return AntennaUnavailable(
                f"redis publish (redirected from {self.where}) failed: "
                f"{type(failure).__name__}: {failure}"
            )
        except RedisError as failure:
            return AntennaError(f"redis refused the publish: {failure}")

    async def _advanced(self, wire: str) -> None:
        """Tell the subscribers of the sharded channel ``wire`` (on this master, the
        slot's owner while it migrates) that its history went on without them: the
        append ran on the importing node, whose ``SPUBLISH`` does not reach them. Best
        effort: when it does not arrive, they catch up when the migration ends."""
        try:
            await bounded(self.client.spublish(wire, ADVANCED), self.timeout)
        except (*UNREACHABLE, RedisError) as failure:
            logger.debug("redis cluster: telling %s's subscribers failed: %r", self.where, failure)


class ClusterPublisher:
    """Routes each publish to the publisher of the master that serves its channel."""

    def __init__(
        self,
        topology: Topology,
        *,
        timeout: float,
        max_pending: int,
        on_lost: Callable[[], None],
        commands: SlotCommands,
    ) -> None:
        self.topology = topology
        self.commands = commands
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
        await self._publisher_of(channel).publish(channel, message)

    async def call(self, channel: str, keys_and_args: tuple[str, ...]) -> Any:
        """Run the append script for ``channel`` on its master (queued in order with the
        channel's publishes); its answer."""
        return await self._publisher_of(channel).call(keys_and_args)

    def _publisher_of(self, channel: str) -> ShardPublisher:
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
                commands=self.commands,
            )
            publisher.start()
        return publisher

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
