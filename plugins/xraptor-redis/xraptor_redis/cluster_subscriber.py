"""The subscriber side of a Redis Cluster antenna: one connection per master, followed
through failovers and slot moves.

Each master of the cluster gets one subscriber connection (a :class:`ShardLink`),
read by its own reader task, carrying the ``SSUBSCRIBE`` of every watched channel
whose slot that master serves: a process holds as many subscriber connections as
the cluster has masters, however many channels it watches. Received messages go
to :meth:`Antenna.deliver`, as on a single server.

redis-py's cluster pub/sub is not used: it reads the nodes in turn and moves shard
channels silently after a topology change, which would hide the gap. Here the
antenna keeps its own account. A channel loses its home when its link drops (a
master died, a network fault), when Redis unsubscribes it (its slot moved away:
Redis sends ``sunsubscribe``), or when a ``SSUBSCRIBE`` gets ``MOVED``; the recovery
task (:mod:`xraptor_redis.cluster_recovery`) then follows the topology and
subscribes it on its slot's master, and once Redis confirmed it the reader reports
a gap for that channel only (before any message of it from the new master).

**Slot migrations.** While a slot migrates (``CLUSTER SETSLOT ... MIGRATING`` on its
master, ``IMPORTING`` on the target), its channels stay subscribed on the old master,
and new ``SSUBSCRIBE``\\ s go there too, without ``ASKING``: Redis serves sharded pub/sub
on a slot's owner whatever the migration (it answers ``SSUBSCRIBE`` and ``SPUBLISH``
itself, never ``ASK``, and the importing node answers ``MOVED`` to the owner), so that
is where the plain publishes are delivered. Subscribing on the importing node instead
(after ``ASKING``) would miss them. When the migration ends (``SETSLOT ... NODE``), the
old master unsubscribes the slot's channels (``sunsubscribe``); the antenna subscribes
them on the new master and reports a gap for them only, as for any slot move, and rooms
with history catch up from it. Mid-way, an append that ran on the importing node
(``ASK``) publishes there, out of the subscribers' reach; its publisher then tells them
on the old master (:data:`~xraptor_redis.history.ADVANCED`), and the reader reports a
gap for that room: rooms with history catch up at once
(:mod:`xraptor_redis.cluster_publisher`).

``state`` is ``down`` only when no master can be reached (every link is down);
a process that lost one shard keeps serving the others, and the channels of the
lost shard get their gap notice when they resume.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from redis.exceptions import ResponseError

from xraptor.antenna import Antenna, AntennaError, AntennaUnavailable
from xraptor.closing import stop_tasks

from ._bounded import bounded
from ._closing import fail_subscribes
from .cluster import TAG_LENGTH, UNREACHABLE, Address, Topology, fmt, is_ask, moved_to, route
from .cluster_link import ShardLink, ping_any, watch_silence
from .cluster_recovery import TopologyFollower
from .history import ADVANCED, MARK, deliver_positioned

logger = logging.getLogger("xraptor_redis")

#: ADVANCED as the reader receives it (decoded with surrogateescape)
_ADVANCED = ADVANCED.decode("utf-8", "surrogateescape")
#: channels per SSUBSCRIBE when (re)subscribing many of one slot
_CHUNK = 500
#: the cap of the recovery backoff while a shard has no reachable master (seconds)
_FOLLOW_CAP = 1.0


class ClusterSubscriber(TopologyFollower):
    """Every subscription of a cluster antenna, on one link per master.

    It reports to the antenna through the contract's driver helpers
    (:meth:`~xraptor.antenna.Antenna.deliver`, ``set_state``, ``report_gap``).
    """

    def __init__(
        self,
        antenna: Antenna,
        topology: Topology,
        *,
        subscribe_timeout: float,
        reconnect_min_delay: float,
        reconnect_max_delay: float,
        health_check_interval: float,
        refresh_interval: float,
    ) -> None:
        self._antenna = antenna
        #: seconds between topology reads nobody asked for (None: never)
        self.refresh_interval = refresh_interval or None
        self.topology = topology
        self.where = topology.config.where
        self.subscribe_timeout = subscribe_timeout
        self.reconnect_min_delay = reconnect_min_delay
        self.follow_cap = max(min(reconnect_max_delay, _FOLLOW_CAP), reconnect_min_delay)
        self.health_check_interval = health_check_interval
        self._links: dict[Address, ShardLink] = {}
        #: links lost, whose connection the recovery task closes
        self._dead: list[ShardLink] = []
        #: wanted channels and the link each is (being) subscribed on (None: homeless)
        self._wanted: dict[str, ShardLink | None] = {}
        #: SSUBSCRIBE confirmations awaited by watch(), per channel
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        self._unsubscribed: dict[str, asyncio.Future[None]] = {}
        #: channels that lost their home after being confirmed: a gap once back
        self._gaps: set[str] = set()
        self._refresh = False
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_refusal = ""
        self._closing = False
        #: links opened after connect (reconnections and new masters)
        self.reconnects = 0

    # ----- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Read the topology, open a link to every master, start the recovery task.

        :raises AntennaUnavailable: no master could be reached
        """
        self._closing = False
        self._wake = asyncio.Event()
        await self.topology.refresh()
        opened = await asyncio.gather(
            *(self._open(address) for address in self.topology.masters), return_exceptions=True
        )
        errors = [result for result in opened if isinstance(result, BaseException)]
        if len(errors) == len(opened):
            await self.close()
            for error in errors:
                if not isinstance(error, UNREACHABLE):
                    raise error
            raise AntennaUnavailable(
                f"cannot reach any master of the Redis Cluster {self.where}: {errors[:1]}"
            )
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(self._recover_forever(), name=f"xraptor-redis recovery {self.where}")
        )
        if self.health_check_interval:
            self._tasks.append(
                loop.create_task(
                    watch_silence(self._links, self.health_check_interval),
                    name=f"xraptor-redis health {self.where}",
                )
            )
        if errors:
            self._refresh = True
            self._wake.set()

    async def close(self) -> None:
        """Stop the tasks, fail every waiting (un)subscribe, close every link."""
        self._closing = True
        tasks, self._tasks = self._tasks, []
        links = [*self._links.values(), *self._dead]
        self._links.clear()
        self._dead.clear()
        for link in links:
            link.alive = False
            if link.reader is not None:
                tasks.append(link.reader)
        await stop_tasks(*tasks)
        self._wanted.clear()
        self._gaps.clear()
        fail_subscribes(self._subscribed, self._unsubscribed)
        for link in links:
            await link.close(self.subscribe_timeout)

    # ----- subscriptions ---------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe ``channel`` on its master; return once Redis confirmed it.

        :raises AntennaUnavailable: no confirmation within ``subscribe_timeout``
        """
        if self._closing:
            raise AntennaError("the redis antenna is closed")
        self._wanted[channel] = None
        future = self._subscribed.get(channel)
        if future is None or future.done():
            future = self._subscribed[channel] = asyncio.get_running_loop().create_future()
        await self._home([channel])
        try:
            async with asyncio.timeout(self.subscribe_timeout):
                await asyncio.shield(future)
        except BaseException as error:
            link = self._wanted.get(channel)
            self._forget(channel)
            if link is not None:  # a SSUBSCRIBE may have reached Redis: take it back
                await self._send_unsubscribe(link, channel, wait=False)
            if isinstance(error, TimeoutError):
                refusal = f"; last refusal: {self._last_refusal}" if self._last_refusal else ""
                raise AntennaUnavailable(
                    f"the Redis Cluster did not confirm SSUBSCRIBE within "
                    f"{self.subscribe_timeout} s ({self.where}){refusal}"
                ) from None
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop wanting ``channel``; return once Redis confirmed (or its link is gone)."""
        link = self._wanted.get(channel)
        self._forget(channel)
        if link is not None:
            await self._send_unsubscribe(link, channel, wait=True)

    def _forget(self, channel: str) -> None:
        self._wanted.pop(channel, None)
        self._gaps.discard(channel)
        future = self._subscribed.pop(channel, None)
        if future is not None and not future.done():
            future.cancel()

    async def _home(self, channels: list[str]) -> None:
        """Send SSUBSCRIBE for ``channels`` (homeless) to their slots' masters, where a
        link is up; wake the recovery task for the others."""
        by_link: dict[ShardLink, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        stranded = False
        for channel in channels:
            if channel not in self._wanted or self._wanted[channel] is not None:
                continue
            wire, slot = route(channel)
            owner = self.topology.owner(slot)
            link = self._links.get(owner) if owner is not None else None
            if link is None or not link.usable:
                stranded = True
                continue
            self._wanted[channel] = link
            by_link[link][slot].append(wire)
        for link, slots in by_link.items():
            # a SSUBSCRIBE may only name channels of one slot
            commands = [
                ("SSUBSCRIBE", *wires[start : start + _CHUNK])
                for wires in slots.values()
                for start in range(0, len(wires), _CHUNK)
            ]
            try:
                await bounded(
                    link.connection.send_packed_command(link.connection.pack_commands(commands)),
                    self.subscribe_timeout,
                )
            except UNREACHABLE as error:
                self._lost(link, error)  # the channels go back to the recovery task
        if stranded:
            self._wake_recovery(refresh=True)

    async def _send_unsubscribe(self, link: ShardLink, channel: str, *, wait: bool) -> None:
        if not link.usable:
            return  # its subscriptions are gone with the connection
        link.unsubscribing[channel] = link.unsubscribing.get(channel, 0) + 1
        future: asyncio.Future[None] | None = None
        if wait:
            future = self._unsubscribed[channel] = asyncio.get_running_loop().create_future()
        try:
            await bounded(
                link.connection.send_command("SUNSUBSCRIBE", route(channel)[0]),
                self.subscribe_timeout,
            )
            if future is not None:
                async with asyncio.timeout(self.subscribe_timeout):
                    await future
        except UNREACHABLE:
            pass  # the link is going away, and its subscriptions with it
        finally:
            if future is not None and self._unsubscribed.get(channel) is future:
                del self._unsubscribed[channel]

    # ----- links, read ------------------------------------------------------------

    async def _open(self, address: Address) -> ShardLink:
        link = await ShardLink.open(self.topology.config, address, self.subscribe_timeout)
        self._links[address] = link
        link.reader = asyncio.get_running_loop().create_task(
            self._read(link), name=f"xraptor-redis reader {fmt(address)}"
        )
        return link

    async def _read(self, link: ShardLink) -> None:
        deliver = self._antenna.deliver
        read = link.connection.read_response
        loop = asyncio.get_running_loop()
        while True:
            try:
                response: Any = await read()
            except ResponseError as error:  # a refused command; the connection goes on
                link.last_read = loop.time()
                self._refused(link, error)
                continue
            except Exception as error:
                self._lost(link, error)
                return
            link.last_read = loop.time()
            if isinstance(response, list):
                kind = response[0]
                if kind == "smessage":
                    data = response[2]
                    if data[:1] != MARK:
                        deliver(response[1][TAG_LENGTH:], data)
                    elif data == _ADVANCED:  # its history went on elsewhere: catch up
                        self._antenna.report_gap([response[1][TAG_LENGTH:]])
                    else:  # a room with history: positioned
                        deliver_positioned(self._antenna, response[1][TAG_LENGTH:], data)
                elif kind == "ssubscribe":
                    self._confirmed(link, response[1][TAG_LENGTH:])
                elif kind == "sunsubscribe":
                    self._unsubscribed_by_redis(link, response[1][TAG_LENGTH:])
                elif kind == "pong":
                    link.pongs.answered(response[1])
            elif isinstance(response, str):  # PING's answer outside subscribed mode
                link.pongs.answered(response)

    def _confirmed(self, link: ShardLink, channel: str) -> None:
        if self._wanted.get(channel) is not link:
            return  # unwatched (or moved) meanwhile
        link.channels.add(channel)
        future = self._subscribed.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)
        if channel in self._gaps:
            self._gaps.discard(channel)
            self._antenna.report_gap([channel])

    def _unsubscribed_by_redis(self, link: ShardLink, channel: str) -> None:
        link.channels.discard(channel)
        pending = link.unsubscribing.get(channel, 0)
        if pending:  # the answer to our own SUNSUBSCRIBE
            if pending == 1:
                del link.unsubscribing[channel]
            else:
                link.unsubscribing[channel] = pending - 1
            future = self._unsubscribed.pop(channel, None)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if self._wanted.get(channel) is link:
            # Redis dropped it: its slot moved to another master
            logger.info(
                "redis cluster: %s moved the channel's slot away; following", fmt(link.address)
            )
            self._wanted[channel] = None
            self._gaps.add(channel)
            self._wake_recovery(refresh=True)

    def _refused(self, link: ShardLink, error: ResponseError) -> None:
        target = moved_to(error)
        if target is None:
            self._last_refusal = f"{fmt(link.address)}: {error}"
            logger.warning("redis cluster: %s refused a command: %s", fmt(link.address), error)
            return
        slot, address = target
        if not is_ask(error):  # ASK (not expected for SSUBSCRIBE): the slot is not moved yet
            self.topology.learn(slot, address)
        for channel, home in self._wanted.items():
            if home is link and channel not in link.channels and route(channel)[1] == slot:
                self._wanted[channel] = None
        self._wake_recovery(refresh=True)

    def _lost(self, link: ShardLink, error: BaseException | str) -> None:
        """``link`` is gone: its channels become homeless (with a gap if they were live)."""
        if not link.alive:
            return
        link.alive = False
        if self._links.get(link.address) is link:
            del self._links[link.address]
        self._dead.append(link)
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        link.pongs.fail_all(AntennaUnavailable(f"lost the link to {fmt(link.address)}"))
        for channel, home in self._wanted.items():
            if home is link:
                self._wanted[channel] = None
                if channel in link.channels:
                    self._gaps.add(channel)
        if self._closing:
            return
        logger.warning(
            "redis cluster: lost the subscriber connection to %s (%s); %d channels to move",
            fmt(link.address),
            reason,
            len(link.channels),
        )
        if not any(other.usable for other in self._links.values()):
            self._antenna.set_state("down")
        self._wake_recovery(refresh=True)

    # ----- health ------------------------------------------------------------------

    async def ping(self) -> None:
        """``PING`` on every link; return once one answered (the cluster is reachable)."""
        await ping_any(self._links.values(), self.where)

    def describe(self) -> dict[str, Any]:
        """Each master and whether its link is up."""
        return {
            fmt(address): "up" if address in self._links and self._links[address].usable else "down"
            for address in self.topology.masters
        }
