"""The NATS antenna: one NATS connection per process for every channel.

Subjects (``P`` is the ``subject_prefix`` option, ``T`` the channel's token from
:func:`xraptor_nats.subjects.channel_token`):

* ``P.ch.T``: the channel's messages (UTF-8 text), and its liveness probes:
  requests on the same subject that carry the :data:`PROBE_HEADER` header. Every
  process watching the channel answers them instead of delivering them; a probe
  nobody subscribes to gets the server's "no responders" status at once, so
  :meth:`is_alive` is truthful across processes. One subscription per channel
  serves both (one nats-py task per channel).
* ``P.h.<size>_<ttl ms>.T``: the messages of a channel that keeps history, stored in
  a JetStream stream that republishes them to ``P.ch.T`` with their sequence
  (:mod:`xraptor_nats.history`); watchers need nothing more than for other channels.

Health: :meth:`NatsAntenna.ping` (the contract's optional round trip, probed by
the base class) is the same server round trip as :meth:`NatsAntenna._sync`: a
marker published to this connection's own inbox subject comes back. Not
``flush()``, whose cancellation (the probe's timeout) is unsafe, see ``_sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from xraptor.antenna import Antenna, AntennaError, AntennaUnavailable
from xraptor.history import HistoryEntry, HistoryPolicy, Position

from .cluster import MARKER_HEADER, ClusterProbes
from .config import DEFAULT_SERVERS, PENDING_SIZE, positive, redact, split_servers
from .errors import ANY_NATS, UNAVAILABLE, jetstream_errors
from .history import HistoryOptions, JetStreamHistory, check_policy
from .outgoing import Outgoing
from .presence import NatsPresence, bucket_name
from .republish import SEQUENCE_HEADER, STREAM_HEADER, Republished
from .subjects import channel_token, check_prefix

logger = logging.getLogger("xraptor_nats")

#: header that marks a request on a channel's subject as a liveness probe
PROBE_HEADER = "Xraptor-Probe"

#: a JetStream bucket's name
_BUCKET = re.compile(r"^[A-Za-z0-9_-]+$")

_token = functools.lru_cache(maxsize=8192)(channel_token)


class NatsAntenna(Antenna):
    """Pub/sub over NATS core (at-most-once, per-channel order); room history on
    JetStream (:mod:`xraptor_nats.history`).

    Options (keyword arguments, or class-wide with :meth:`set_config`):

    :param servers: a URL (``nats://host:4222``, ``tls://host:4222``), a
        comma-separated list or a list of URLs; default ``nats://127.0.0.1:4222``
    :param publish_timeout: seconds a publish (and a watch) may take before
        :class:`~xraptor.AntennaUnavailable` is raised; default 2.0
    :param subject_prefix: first tokens of every subject; default ``"xraptor"``
    :param alive_timeout: seconds :meth:`is_alive` waits for an answer; default 0.5
    :param connect_timeout: seconds for the first connection; default 2.0
    :param reconnect_time_wait: seconds between reconnection attempts; default 0.5
    :param name: connection name shown in NATS monitoring; default ``"xraptor"``
    :param health_timeout: seconds the health probe (:meth:`ping`) may wait for its
        round trip before the antenna reports ``down``; default 3.0
    :param health_interval: seconds between health probes; default 1.0
    :param connect_options: further keyword arguments for ``nats.connect`` (``user``,
        ``password``, ``token``, ``tls``, ``user_credentials``, ...)
    :param presence_ttl: seconds a room member of a process that stopped refreshing it
        stays listed; default 30 (see :mod:`xraptor_nats.presence`, which needs JetStream)
    :param presence_bucket: the key-value bucket of presence; default the subject
        prefix (dots as ``_``) and ``_presence``
    :param history_stream_prefix: first part of the history streams' names; default
        ``XRAPTOR_H`` (with a digest of ``subject_prefix`` when that is not the default)
    :param history_storage: ``"file"`` (default: history outlives a server restart)
        or ``"memory"``
    :param history_replicas: replicas of each history stream (clustered JetStream); default 1
    """

    name: ClassVar[str] = "nats"
    #: ``nats://`` and ``tls://`` (TLS), nats-py's schemes for a NATS server
    schemes: ClassVar[tuple[str, ...]] = ("nats", "tls")
    _config: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = self.options
        if "servers" not in opts and "url" in opts:
            opts["servers"] = opts["url"]
        self.servers = split_servers(opts.get("servers", DEFAULT_SERVERS))
        self.subject_prefix = check_prefix(opts.get("subject_prefix", "xraptor"))
        self.publish_timeout = positive(opts, "publish_timeout", 2.0)
        self.alive_timeout = positive(opts, "alive_timeout", 0.5)
        self.connect_timeout = positive(opts, "connect_timeout", 2.0)
        self.reconnect_time_wait = positive(opts, "reconnect_time_wait", 0.5)
        extra = opts.get("connect_options", {})
        if not isinstance(extra, dict):
            raise TypeError("connect_options must be a dict of nats.connect keyword arguments")
        self._connect_options: dict[str, Any] = dict(extra)
        self._conn_name = str(opts.get("name", "xraptor"))
        self._where = ", ".join(redact(url) for url in self.servers)
        self._outgoing = Outgoing(PENDING_SIZE, self.publish_timeout, self._where)
        self._history_options = HistoryOptions.from_options(opts, self.subject_prefix)
        self._jetstream: JetStreamHistory | None = None
        self._republished: Republished | None = None
        self._nc: Client | None = None
        self._subs: dict[str, NatsSubscription] = {}
        self._sid_channel: dict[int, str] = {}
        self._closing = False
        self._sync_subject = ""
        self._sync_seq = itertools.count()
        self._sync_waiters: dict[int, asyncio.Future[None]] = {}
        #: connections to the other members of a cluster (none for a lone server)
        self._cluster = ClusterProbes({**self._connect_options, "name": f"{self._conn_name}-probe"})
        #: how many times the connection came back after an outage
        self.reconnects = 0
        bucket = opts.get("presence_bucket") or bucket_name(self.subject_prefix)
        if not isinstance(bucket, str) or not _BUCKET.match(bucket):
            raise ValueError(f"presence_bucket must be letters, digits, '_' or '-'; got {bucket!r}")
        self._presence = NatsPresence(bucket, self.publish_timeout)

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        return {"servers": url}

    # ----- subjects -------------------------------------------------------------

    def subject(self, channel: str) -> str:
        """The literal NATS subject carrying ``channel``'s messages."""
        return f"{self.subject_prefix}.ch.{_token(channel)}"

    # ----- connection -----------------------------------------------------------

    async def connect(self) -> None:
        options: dict[str, Any] = {
            "name": self._conn_name,
            "allow_reconnect": True,
            # nats-py retries the *first* connection too, forever when this is -1:
            # try each server twice at start, then reconnect forever (set below)
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": self.reconnect_time_wait,
            "connect_timeout": self.connect_timeout,
            "ping_interval": 10,
            "max_outstanding_pings": 2,
            "pending_size": PENDING_SIZE,
            **self._connect_options,
        }
        self._outgoing = Outgoing(int(options["pending_size"]), self.publish_timeout, self._where)
        options.update(
            # this process must receive its own messages (its streams and the sync markers)
            no_echo=False,
            servers=self.servers,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            discovered_server_cb=self._on_discovered,
        )
        try:
            nc = await nats.connect(**options)
        except Exception as error:
            raise AntennaUnavailable(
                f"cannot connect to NATS at {self._where}: {type(error).__name__}: {error}"
            ) from error
        # read by nats-py at each reconnection
        nc.options["max_reconnect_attempts"] = self._connect_options.get(
            "max_reconnect_attempts", -1
        )
        version = nc.connected_server_version
        if (version.major, version.minor) < (2, 2):
            await nc.close()
            raise AntennaError(
                f"the NATS antenna needs nats-server >= 2.2 (for 'no responders'); "
                f"connected to {version}"
            )
        self._sync_subject = nc.new_inbox()
        await nc.subscribe(self._sync_subject, cb=self._on_sync)
        self._jetstream = JetStreamHistory(
            nc, self._history_options, self.subject_prefix, self.publish_timeout
        )
        self._republished = Republished(self._jetstream, self)
        self._nc = nc
        await self._cluster.refresh(nc, wait=True)
        self.set_state("up")

    async def disconnect(self) -> None:
        self._closing = True
        nc, self._nc = self._nc, None
        self._subs.clear()
        self._sid_channel.clear()
        await self._cluster.close()
        if nc is None:
            return
        if nc.is_connected:
            with contextlib.suppress(*ANY_NATS):  # let what was published reach the server
                await self._sync(nc)
        await nc.close()

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, nats.errors.SlowConsumerError):
            channel = self._sid_channel.get(error.sid)
            if channel is not None:
                logger.warning("NATS dropped messages of channel %.64r (slow consumer)", channel)
                self.report_gap([channel])
                return
        # while down, nats-py reports each failed reconnection attempt: keep them quiet
        level = logging.DEBUG if self.connection_state == "down" else logging.WARNING
        logger.log(level, "NATS: %s: %s", type(error).__name__, error)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        logger.warning("lost the NATS connection; reconnecting")
        self.set_state("down")
        if self._jetstream is not None:  # the server may come back without its streams
            self._jetstream.forget()

    async def _on_reconnected(self) -> None:
        if self._closing:
            return
        nc = self._nc
        if nc is not None:
            # maybe on another member now: every member must route the resubscribed
            # channels here before the gap is reported (a fresh marker subject proves
            # the resubscriptions sent before it)
            with contextlib.suppress(*ANY_NATS):
                await self._cluster.refresh(nc, wait=False)
                marker = await nc.subscribe(nc.new_inbox(), cb=self._on_marker)
                try:
                    await self._sync(nc)
                    await self._cluster.confirm(marker.subject, self.publish_timeout)
                finally:
                    await _unsubscribe(marker, "cluster marker")
        self.reconnects += 1
        logger.warning("NATS connection back; subscriptions restored")
        self.set_state("up")
        # nats-py resubscribed every subscription before calling us; messages
        # published during the outage are lost (history rooms recover them), so say so.
        self.report_gap(self.watched_channels())

    async def _on_discovered(self) -> None:
        """The server announced new cluster members: open probe connections to them."""
        nc = self._nc
        if nc is not None and not self._closing:
            with contextlib.suppress(*ANY_NATS):
                await self._cluster.refresh(nc, wait=False)

    async def _on_marker(self, msg: Msg) -> None:
        if msg.headers:
            token = msg.headers.get(MARKER_HEADER)
            if token is not None:
                self._cluster.on_marker(token)

    async def _on_closed(self) -> None:
        if not self._closing:
            self.set_state("down")

    def _connected(self) -> Client:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise AntennaUnavailable(
                f"NATS at {self._where} is unreachable now"
                if nc is not None
                else "the NATS antenna is not connected"
            )
        return nc

    # ----- driver ---------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        nc = self._connected()
        subject = self.subject(channel)
        data = await self._outgoing.encode(nc, message, len(subject))
        try:
            # with room in the buffer nats-py only queues the message: no suspension
            await nc.publish(subject, data)
        except UNAVAILABLE as error:
            raise AntennaUnavailable(
                f"could not publish to NATS: {type(error).__name__}: {error}"
            ) from error

    async def publish_with_history(
        self, channel: str, message: str, history: HistoryPolicy
    ) -> Position:
        check_policy(history)
        nc = self._connected()
        data = await self._outgoing.encode(nc, message, 128)
        assert self._jetstream is not None
        async with jetstream_errors("publish to the history"):
            return await self._jetstream.publish(channel, _token(channel), data, history)

    async def read_history(self, channel: str, after: Position) -> list[HistoryEntry] | None:
        self._connected()
        assert self._jetstream is not None
        async with jetstream_errors("read the history"):
            return await self._jetstream.read(_token(channel), after, self.history_of(channel))

    async def newest_position(self, channel: str) -> Position | None:
        """The position of the room's newest stored message (``None`` when its history
        is empty: see :meth:`JetStreamHistory.newest`)."""
        policy = self.history_of(channel)
        if policy is None:
            return None
        self._connected()
        assert self._jetstream is not None
        async with jetstream_errors("read where the history stands"):
            return await self._jetstream.newest(_token(channel), policy)

    async def watch(self, channel: str) -> None:
        nc = self._connected()

        async def on_message(msg: Msg) -> None:
            headers = msg.headers
            if headers:
                if msg.reply and PROBE_HEADER in headers:
                    await _answer_probe(msg)
                    return
                token = headers.get(MARKER_HEADER)
                if token is not None:  # a cluster marker (ours, or another process's)
                    self._cluster.on_marker(token)
                    return
                if STREAM_HEADER in headers and SEQUENCE_HEADER in headers:
                    assert self._republished is not None
                    await self._republished.deliver(channel, msg.data, headers)
                    return
            self.deliver(channel, msg.data.decode("utf-8", "surrogatepass"))

        if channel in self._subs:  # the hub watches once; be safe all the same
            await self._drop(channel, sync=False)
        if self._republished is not None:  # a history room: where its stream stands
            try:
                await self._republished.watching(channel, self.history_of(channel))
            except ANY_NATS as error:
                logger.warning("history stream of %.64r not read: %s", channel, error)
        # one subscription per channel carries both its messages and its liveness
        # probes (requests with the probe header): one nats-py task per channel
        subject = self.subject(channel)
        messages = await nc.subscribe(subject, cb=on_message)
        self._subs[channel] = messages
        self._sid_channel[messages._id] = channel
        try:
            await self._sync(nc)
            # in a cluster: until every member routes the channel here
            await self._cluster.confirm(subject, self.publish_timeout)
        except BaseException as error:
            # cancelled or failed: the hub does not count the channel as watched,
            # so nothing may stay subscribed
            await self._drop(channel, sync=False)
            if isinstance(error, UNAVAILABLE):
                raise AntennaUnavailable(
                    f"could not subscribe on NATS: {type(error).__name__}: {error}"
                ) from error
            raise

    async def unwatch(self, channel: str) -> None:
        await self._drop(channel, sync=True)

    async def _drop(self, channel: str, *, sync: bool) -> None:
        messages = self._subs.pop(channel, None)
        if self._republished is not None:
            self._republished.stop(channel)
        if messages is None:
            return
        self._sid_channel.pop(messages._id, None)
        await _unsubscribe(messages, channel)
        nc = self._nc
        if sync and nc is not None and nc.is_connected:
            # once this returns, no other process sees this one as alive
            try:
                await self._sync(nc)
            except ANY_NATS as error:
                logger.debug("confirming the unsubscribe of %.64r: %s", channel, error)

    async def ping(self) -> None:
        """One round trip through the server (a :meth:`_sync` marker), bounded by the caller."""
        await self._sync(self._connected(), bounded=False)

    async def _sync(self, nc: Client, *, bounded: bool = True) -> None:
        """Return once the server has processed every command sent so far.

        Within ``publish_timeout`` when ``bounded``, else the caller bounds it
        (the health probe, with ``health_timeout``); cancelling it is safe.

        This publishes a marker to a subject only this connection subscribes to
        and waits for it to come back: the server handles a connection's commands
        in order, so by then it has every SUB/UNSUB sent before.

        nats-py's ``flush()`` is not used, for two reasons: it writes its PING
        straight to the socket, ahead of commands still queued for its flusher
        task (a SUB just sent may be), so it can return too early; and a flush
        that times out or is cancelled leaves a cancelled future behind whose
        PONG later kills the client's read loop (InvalidStateError), leaving a
        connection that looks connected and reads nothing.
        """
        marker = next(self._sync_seq)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sync_waiters[marker] = done
        try:
            await self._outgoing.room(nc, 64 + len(self._sync_subject))
            await nc.publish(self._sync_subject, str(marker).encode())
            async with asyncio.timeout(self.publish_timeout if bounded else None):
                await done
        finally:
            self._sync_waiters.pop(marker, None)

    async def _on_sync(self, msg: Msg) -> None:
        try:
            done = self._sync_waiters.pop(int(msg.data))
        except (KeyError, ValueError):
            return
        if not done.done():
            done.set_result(None)

    async def presence_set(self, room: str, members: Mapping[str, str]) -> None:
        await self._presence.put(self._connected(), room, members, self.presence_ttl)

    async def presence_remove(self, room: str, members: Collection[str]) -> None:
        await self._presence.remove(self._connected(), room, members, self.presence_ttl)

    async def presence_list(self, room: str) -> dict[str, str]:
        return await self._presence.read(self._connected(), room, self.presence_ttl)

    async def presence_expire(self, room: str) -> dict[str, str]:
        return await self._presence.expire(self._connected(), room, self.presence_ttl)

    async def is_alive(self, channel: str) -> bool:
        if channel in self._subs:
            return True
        nc = self._connected()
        # The server answers "no responders" at once when nobody subscribes to the
        # probe subject, so silence means a watcher exists but is slow; or, in a
        # cluster, that this member still routed the probe to a member whose last
        # watcher just left (interest is withdrawn over the routes a moment later).
        # So silence is asked about once more before it counts as alive.
        for attempt in (1, 2):
            try:
                await nc.request(
                    self.subject(channel),
                    b"",
                    timeout=self.alive_timeout,
                    headers={PROBE_HEADER: "1"},
                )
            except nats.errors.NoRespondersError:
                return False
            except nats.errors.TimeoutError:
                if attempt == 2:
                    return nc.is_connected or self._raise_unavailable()
            except UNAVAILABLE as error:
                raise AntennaUnavailable(
                    f"could not probe NATS: {type(error).__name__}: {error}"
                ) from error
            else:
                return True
        raise AssertionError("unreachable")

    def _raise_unavailable(self) -> bool:
        raise AntennaUnavailable(f"NATS at {self._where} is unreachable now")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            servers=[redact(url) for url in self.servers], subject_prefix=self.subject_prefix
        )
        info["reconnects"] = self.reconnects
        if self._republished is not None:
            info["history_overtakes"] = self._republished.overtakes
        return info


async def _unsubscribe(sub: NatsSubscription, channel: str) -> None:
    try:
        await sub.unsubscribe()
    except ANY_NATS as error:
        logger.debug("unsubscribe of %.64r: %s", channel, error)


async def _answer_probe(msg: Msg) -> None:
    if msg.reply:
        try:
            await msg.respond(b"1")
        except ANY_NATS as error:
            logger.debug("could not answer a liveness probe: %s", error)
