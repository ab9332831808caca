"""One client connection: its streams and its outgoing frames."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .protocol import GAP_TAIL, push_prefix, push_tail
from .sampling import LogSampler

if TYPE_CHECKING:
    from .antenna import Antenna
    from .broadcast import Broadcast
    from .history import Position
    from .metrics import Metrics

logger = logging.getLogger("xraptor.connection")

#: close code used for the slow-consumer policy (RFC 6455 "try again later")
SLOW_CONSUMER_CLOSE = 1013


#: the in-flight requests of a connection none of whose requests ever waited (most):
#: shared and never changed, so an idle connection costs no set of its own
_NO_TASKS: frozenset[asyncio.Task[Any]] = frozenset()


class Stream:
    """A SUB's stream: the hub listener that pushes its channel to its connection."""

    __slots__ = (
        "_gap_round",
        "antenna",
        "connection",
        "prefix",
        "presence",
        "request_id",
        "rooms",
        "since",
    )

    def __init__(self, connection: Connection, request_id: str, antenna: Antenna) -> None:
        self.connection = connection
        self.request_id = request_id
        self.antenna = antenna
        self.prefix = push_prefix(request_id)
        self.rooms: set[Broadcast] = set()
        #: the positions its SUB asked to recover from, by room (header ``since``),
        #: until the recovery ran (see :mod:`xraptor.recovery`); ``None``: none
        self.since: dict[str, Position] | None = None
        #: what its SUB shares in rooms with presence (header ``presence``, JSON text)
        self.presence: str | None = None
        self._gap_round = -1

    def on_message(self, channel: str, message: str) -> None:
        self.connection.push(self.prefix + push_tail(message))

    def on_gap(self, channel: str) -> None:
        # a stream whose rooms all keep history is told by them (they catch up, or push
        # "unrecovered"); its own channel (its request id) keeps none: see the README's
        # "Delivery guarantees" for what that leaves uncovered
        rooms = self.rooms
        if rooms and all(room.keeps_history for room in rooms):
            return
        self.notify_gap(self.antenna.gap_round)

    def notify_gap(self, gap: int) -> None:
        """Push the gap notice, once per reported gap (``gap``: the antenna's
        :attr:`~xraptor.Antenna.gap_round`) even if several channels feed the stream."""
        if self._gap_round == gap:
            return
        self._gap_round = gap
        self.connection.metrics.gap_notices_total += 1
        self.connection.push(self.prefix + GAP_TAIL)


class Closed(Exception):
    """Raised by a transport's :attr:`Connection.receive` once the peer closed or the
    connection was lost (the websockets transport raises websockets'
    ``ConnectionClosed``, which the reader treats the same)."""


class Inbox(Protocol):
    """What the reader sees of the messages a transport received and has not handed
    over yet: whether one is waiting, and whether the last one read was text."""

    text: bool

    def __len__(self) -> int: ...


class Connection:
    """What handlers and middlewares see of a client connection, whatever carries it.

    This class is also the **transport seam** (design §10): the reader, dispatch,
    streams, fan-out, the slow-consumer policy and the drain use only what is
    below, and each transport subclasses it (``xraptor.websocket_transport`` for the
    ``websockets`` server, ``xraptor.asgi`` for ASGI servers). A transport provides:

    - handshake data: :attr:`path`, :attr:`remote_ip`, :attr:`headers`,
      :attr:`identity` (what the connect guards returned);
    - :attr:`receive`: a callable returning an awaitable of the next message's
      data (``bytes`` or ``str`` of JSON), raising :class:`Closed` (or websockets'
      ``ConnectionClosed``) once the connection ended;
    - :attr:`frames`: an :class:`Inbox` (is another message waiting? was the last
      one text, so that invalid UTF-8 closes with 1007?);
    - :meth:`write` (a frame now, or ``False``), :meth:`send` (when there is room),
      :meth:`enqueue` (now, bounded by the caller), :meth:`buffered`, :meth:`is_open`;
    - :meth:`close`, :meth:`abort` and :meth:`wait_closed`;
    - a call of :meth:`lost` when the connection is gone, so that requests
      waiting for something are cancelled.

    Outgoing frames are UTF-8 JSON ``bytes``, always sent as text messages.

    :param max_buffer: bytes allowed in the outgoing buffer before the
        slow-consumer policy closes the connection

    :ivar identity: what the connect guards returned at the handshake (``None``
        without guards)
    :ivar ws: the ``websockets`` connection on that transport, ``None`` on others
    :ivar transport: the transport's name (``"websockets"``, ``"asgi"`` ...)
    """

    __slots__ = (
        "_closer",
        "_closing",
        "_connection_id",
        "_room",
        "_state",
        "_streams",
        "cancelled_reader",
        "frames",
        "identity",
        "max_buffer",
        "metrics",
        "path",
        "reader",
        "receive",
        "refusal_log",
        "remote_ip",
        "serving_inline",
        "tasks",
        "ws",
    )

    transport: ClassVar[str] = ""
    frames: Inbox
    receive: Callable[[], Awaitable[bytes | str]]

    def __init__(
        self, path: str, remote_ip: str, identity: object, max_buffer: int, metrics: Metrics
    ) -> None:
        self.ws: Any = None
        self.path = path
        self.remote_ip = remote_ip
        # made on first use, like the two below: most connections never need them
        self._connection_id: str | None = None
        self.identity = identity
        self._streams: dict[str, Stream] | None = None
        self.max_buffer = max_buffer
        self.metrics = metrics
        self._state: dict[str, Any] | None = None
        #: the task reading the connection's messages now
        self.reader: asyncio.Task[Any] | None = None
        #: tasks of GET/POST/PUT requests that are waiting for something (each was the
        #: reader until its handler waited: see ``Reader._read_loop``)
        self.tasks: AbstractSet[asyncio.Task[Any]] = _NO_TASKS  # a set once one waits
        #: whether :meth:`cancel_requests` cancelled the reader or a request's task
        self.cancelled_reader = False
        #: whether the reader is serving a SUB or UNSUB (or any request with max_inflight=1)
        self.serving_inline = False
        self._room: asyncio.Future[None] | None = None
        #: samples the log lines of refused requests (made on the first refusal)
        self.refusal_log: LogSampler | None = None
        self._closing = False
        self._closer: asyncio.Task[None] | None = None

    @property
    def connection_id(self) -> str:
        """A random hex id of this connection (in log lines, presence member ids)."""
        ident = self._connection_id
        if ident is None:
            ident = self._connection_id = uuid.uuid4().hex
        return ident

    @property
    def streams(self) -> dict[str, Stream]:
        """The connection's open SUB streams, by request id."""
        streams = self._streams
        if streams is None:
            streams = self._streams = {}
        return streams

    @property
    def state(self) -> dict[str, Any]:
        """A free-form dict for handlers and middlewares (per connection)."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._state = value

    # ----- the transport (overridden by each) ----------------------------------------

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers of the opening handshake (case-insensitive; ``get_all`` for
        repeated ones): what middlewares need of the HTTP request, whatever the
        transport."""
        raise NotImplementedError

    def write(self, frame: bytes) -> bool:
        """Write a frame now; ``False`` when the caller should ``await send(frame)``."""
        raise NotImplementedError

    def enqueue(self, frame: bytes) -> bool:
        """Hand a frame to the transport now, even past the point where :meth:`write`
        says wait (the fan-out path: the caller bounds the buffer by ``max_buffer``);
        ``False`` if it could not."""
        raise NotImplementedError

    async def send(self, frame: bytes) -> None:
        """Send a frame, waiting for room in the outgoing buffer; a frame for a
        connection that closed meanwhile is dropped."""
        raise NotImplementedError

    def buffered(self) -> int:
        """Bytes written and not sent to the peer yet."""
        raise NotImplementedError

    def is_open(self) -> bool:
        """Whether frames can still be written."""
        raise NotImplementedError

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake and wait until it ended (bounded by the transport)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake."""
        raise NotImplementedError

    async def wait_closed(self) -> None:
        """Wait until the connection ended."""
        raise NotImplementedError

    # ----- in-flight requests ----------------------------------------------------------

    def hand_over(self, reader: Coroutine[Any, Any, None]) -> None:
        """The reader waits inside a request: it becomes that request's task (until
        :meth:`request_done`) and a new task reads on, running ``reader``."""
        busy = self.reader
        assert busy is not None, "hand_over without a reader"
        tasks = self.tasks if isinstance(self.tasks, set) else set()
        tasks.add(busy)
        self.tasks = tasks
        self.reader = asyncio.get_running_loop().create_task(reader)

    def request_done(self, task: asyncio.Task[Any]) -> None:
        """``task`` finished the request it was handed over with (see :meth:`hand_over`)."""
        if isinstance(self.tasks, set):
            self.tasks.discard(task)
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    async def wait_for_room(self, limit: int) -> None:
        """Wait until fewer than ``limit`` requests are in flight (backpressure)."""
        while len(self.tasks) >= limit:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None

    def cancel_requests(self) -> None:
        """Cancel the requests in flight: their tasks, and the reader if it waits
        anywhere but for the next message (serving a SUB, or waiting for room)."""
        for task in self.tasks:
            # the connection's first task may be among them (handed over): it ends
            # quietly rather than cancelled, as an ASGI server would log that
            self.cancelled_reader = True
            task.cancel()
        reader = self.reader
        if reader is not None and (self.serving_inline or self._room is not None):
            self.cancelled_reader = True
            reader.cancel()

    def lost(self, _: object = None) -> None:
        """The connection is gone (the transport calls this): cancel what would
        otherwise wait for nothing."""
        self.cancel_requests()

    async def cancel_tasks(self, me: asyncio.Task[Any] | None) -> None:
        """Cancel the reader and the requests in flight but ``me``; wait until they ended."""
        tasks = [task for task in {*self.tasks, self.reader} if task is not None and task is not me]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ----- pushes ------------------------------------------------------------------------

    def push(self, frame: bytes) -> None:
        """Write a push frame now, without waiting (the hub's fan-out path).

        A connection whose outgoing buffer is past ``max_buffer`` is a slow
        consumer: it is closed with code 1013 and counted, rather than letting
        memory grow or dropping messages silently.
        """
        if self._closing or not self.is_open():
            return
        if self.buffered() > self.max_buffer:
            self._slow_consumer()
            return
        if self.enqueue(frame):
            self.metrics.pushes_total += 1

    def _slow_consumer(self) -> None:
        self._closing = True
        self.metrics.slow_consumer_disconnects_total += 1
        logger.warning(
            "closing slow consumer %s (%s): outgoing buffer over %d bytes",
            self.connection_id,
            self.remote_ip,
            self.max_buffer,
        )
        # kept on the connection until done (the loop holds only weak task references)
        self._closer = asyncio.get_running_loop().create_task(
            self.close(SLOW_CONSUMER_CLOSE, "slow consumer: outgoing buffer full")
        )
