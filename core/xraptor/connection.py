"""One client connection: its streams and its outgoing frames."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Coroutine, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from .handshake import identity_of
from .protocol import GAP_TAIL, push_prefix, push_tail
from .sampling import LogSampler

if TYPE_CHECKING:
    from .antenna import Antenna
    from .broadcast import Broadcast
    from .metrics import Metrics

logger = logging.getLogger("xraptor.connection")

#: close code used for the slow-consumer policy (RFC 6455 "try again later")
SLOW_CONSUMER_CLOSE = 1013


#: the in-flight requests of a connection none of whose requests ever waited (most):
#: shared and never changed, so an idle connection costs no set of its own
_NO_TASKS: frozenset[asyncio.Task[Any]] = frozenset()


class FrameQueue(collections.deque[Frame]):
    """websockets' queue of received frames, remembering whether the message read last
    was a text message.

    The server reads messages as bytes (``recv(decode=False)``) and parses them with
    orjson, which rejects invalid UTF-8; telling a text message (close with 1007,
    RFC 6455) from a binary one (answer ``invalid_json``) then needs the opcode,
    which ``recv`` does not return. Installed in place of the Assembler's deque by
    :meth:`Connection.__init__`; costs one Python call per frame, where decoding text
    frames to ``str`` would cost a decode and, for non-ASCII JSON, an encode back.
    """

    __slots__ = ("text",)

    def __init__(self, frames: collections.deque[Frame]) -> None:
        super().__init__(frames)
        self.text = True

    def popleft(self) -> Frame:
        frame = _popleft(self)
        opcode = frame.opcode
        if opcode is not Opcode.CONT:
            self.text = opcode is Opcode.TEXT
        return frame


_popleft = collections.deque.popleft


class Stream:
    """A SUB's stream: the hub listener that pushes its channel to its connection."""

    __slots__ = ("_gap_round", "antenna", "connection", "prefix", "request_id", "rooms")

    def __init__(self, connection: Connection, request_id: str, antenna: Antenna) -> None:
        self.connection = connection
        self.request_id = request_id
        self.antenna = antenna
        self.prefix = push_prefix(request_id)
        self.rooms: set[Broadcast] = set()
        self._gap_round = -1

    def on_message(self, channel: str, message: str) -> None:
        self.connection.push(self.prefix + push_tail(message))

    def on_gap(self, channel: str) -> None:
        self.notify_gap(self.antenna.gap_round)

    def notify_gap(self, gap: int) -> None:
        """Push the gap notice, once per reported gap (``gap``: the antenna's
        :attr:`~xraptor.Antenna.gap_round`) even if several channels feed the stream."""
        if self._gap_round == gap:
            return
        self._gap_round = gap
        self.connection.metrics.gap_notices_total += 1
        self.connection.push(self.prefix + GAP_TAIL)


class Connection:
    """What handlers and middlewares see of a client connection.

    :param max_buffer: bytes allowed in the outgoing buffer before the
        slow-consumer policy closes the connection

    :ivar identity: what the connect guards returned at the handshake (``None``
        without guards)
    """

    __slots__ = (
        "_closer",
        "_closing",
        "_room",
        "cancelled_reader",
        "connection_id",
        "frames",
        "identity",
        "max_buffer",
        "metrics",
        "path",
        "reader",
        "refusal_log",
        "remote_ip",
        "serving_inline",
        "state",
        "streams",
        "tasks",
        "ws",
    )

    def __init__(self, ws: ServerConnection, max_buffer: int, metrics: Metrics) -> None:
        self.ws = ws
        self.path = ws.request.path if ws.request is not None else "/"
        remote = ws.remote_address
        self.remote_ip: str = remote[0] if remote else ""
        self.connection_id = uuid.uuid4().hex
        self.identity: object = identity_of(ws)
        self.streams: dict[str, Stream] = {}
        self.max_buffer = max_buffer
        self.metrics = metrics
        self.state: dict[str, Any] = {}
        queue = ws.recv_messages.frames
        #: the frames received and not read yet (see :class:`FrameQueue`)
        self.frames = queue.queue = FrameQueue(queue.queue)
        #: the task reading the connection's messages now
        self.reader: asyncio.Task[Any] | None = None
        #: tasks of GET/POST/PUT requests that are waiting for something (each was the
        #: reader until its handler waited: see ``Dispatch._read_loop``)
        self.tasks: AbstractSet[asyncio.Task[Any]] = _NO_TASKS  # a set once one waits
        #: whether :meth:`cancel_requests` cancelled the reader
        self.cancelled_reader = False
        #: whether the reader is serving a SUB or UNSUB (or any request with max_inflight=1)
        self.serving_inline = False
        self._room: asyncio.Future[None] | None = None
        #: samples the log lines of refused requests (made on the first refusal)
        self.refusal_log: LogSampler | None = None
        self._closing = False
        self._closer: asyncio.Task[None] | None = None

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
            task.cancel()
        reader = self.reader
        if reader is not None and (self.serving_inline or self._room is not None):
            self.cancelled_reader = True
            reader.cancel()

    def lost(self, _: object = None) -> None:
        """The connection is gone (a callback of websockets' connection-lost future):
        cancel what would otherwise wait for nothing."""
        self.cancel_requests()

    async def cancel_tasks(self, me: asyncio.Task[Any] | None) -> None:
        """Cancel the reader and the requests in flight but ``me``; wait until they ended."""
        tasks = [task for task in {*self.tasks, self.reader} if task is not None and task is not me]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers of the opening handshake (case-insensitive; ``get_all`` for
        repeated ones): what middlewares need of the HTTP request, without reaching
        into the transport (``ws``)."""
        request = self.ws.request
        return request.headers if request is not None else Headers()

    @property
    def ws_server(self) -> ServerConnection:
        """The websockets connection (the 0.4 name)."""
        return self.ws

    def write(self, frame: bytes) -> bool:
        """Write a frame now if the connection is open and its transport not paused.

        Returns ``False`` when the caller should ``await send(frame)`` instead.
        """
        ws = self.ws
        protocol = ws.protocol
        if protocol.state is not State.OPEN or ws.paused:
            return False
        try:  # _write_text, inline: this is every answer's path
            protocol.send_text(frame)
            ws.send_data()
        except Exception as error:
            logger.debug("writing a frame failed: %s", error)
            return False
        return True

    def _write_text(self, frame: bytes) -> bool:
        """Hand one text frame to websockets and the transport, as ``broadcast()`` does."""
        ws = self.ws
        try:
            ws.protocol.send_text(frame)
            ws.send_data()
        except Exception as error:
            logger.debug("writing a frame failed: %s", error)
            return False
        return True

    async def send(self, frame: bytes) -> None:
        """Send one frame (UTF-8 JSON) as a text message, waiting for buffer room.

        While the connection is open and its transport is not paused, the frame is
        written at once, as ``websockets.broadcast`` does; otherwise ``send()``
        waits for the buffer to drain (flow control) or for the close to finish.
        """
        if self.write(frame):
            return
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frame, text=True)

    def push(self, frame: bytes) -> None:
        """Write a push frame now, without waiting (the hub's fan-out path).

        A connection whose outgoing buffer is past ``max_buffer`` is a slow
        consumer: it is closed with code 1013 and counted, rather than letting
        memory grow or dropping messages silently.
        """
        ws = self.ws
        if self._closing or ws.protocol.state is not State.OPEN:
            return
        if ws.transport.get_write_buffer_size() > self.max_buffer:
            self._slow_consumer()
            return
        if self._write_text(frame):
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
            self.ws.close(SLOW_CONSUMER_CLOSE, "slow consumer: outgoing buffer full")
        )
