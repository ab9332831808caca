"""The ``websockets`` transport: xraptor's own server, where the hot-path tricks live.

:class:`WebsocketsConnection` implements the :class:`~xraptor.connection.Connection`
seam on a ``websockets`` server connection. Answers and pushes are written inline,
without a task (``protocol.send_text`` then ``send_data``, as ``websockets.broadcast``
does), each room message having been encoded once for all its members; the slow-
consumer policy reads the transport's write buffer directly.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
from collections.abc import Mapping

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from .connection import Connection
from .handshake import identity_of
from .metrics import Metrics

logger = logging.getLogger("xraptor.connection")


class FrameQueue(collections.deque[Frame]):
    """websockets' queue of received frames, remembering whether the message read last
    was a text message.

    The server reads messages as bytes (``recv(decode=False)``) and parses them with
    orjson, which rejects invalid UTF-8; telling a text message (close with 1007,
    RFC 6455) from a binary one (answer ``invalid_json``) then needs the opcode,
    which ``recv`` does not return. Installed in place of the Assembler's deque by
    :class:`WebsocketsConnection`; costs one Python call per frame, where decoding
    text frames to ``str`` would cost a decode and, for non-ASCII JSON, an encode back.
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


class WebsocketsConnection(Connection):
    """A client connection of xraptor's own ``websockets`` server (:attr:`ws`)."""

    __slots__ = ()

    transport = "websockets"
    ws: ServerConnection
    frames: FrameQueue

    def __init__(self, ws: ServerConnection, max_buffer: int, metrics: Metrics) -> None:
        remote = ws.remote_address
        super().__init__(
            ws.request.path if ws.request is not None else "/",
            str(remote[0]) if remote else "",
            identity_of(ws),
            max_buffer,
            metrics,
        )
        self.ws = ws
        self.receive = functools.partial(ws.recv, decode=False)
        queue = ws.recv_messages.frames
        #: the frames received and not read yet (see :class:`FrameQueue`)
        self.frames = queue.queue = FrameQueue(queue.queue)
        # when the connection is lost, cancel whatever its requests wait for (websockets'
        # connection-lost future: no task of ours waits for the close)
        ws.connection_lost_waiter.add_done_callback(self.lost)

    @property
    def headers(self) -> Mapping[str, str]:
        request = self.ws.request
        return request.headers if request is not None else Headers()

    @property
    def ws_server(self) -> ServerConnection:
        """The websockets connection (the 0.4 name)."""
        return self.ws

    def is_open(self) -> bool:
        return self.ws.protocol.state is State.OPEN

    def buffered(self) -> int:
        return self.ws.transport.get_write_buffer_size()

    def write(self, frame: bytes) -> bool:
        """Write a frame now if the connection is open and its transport not paused."""
        ws = self.ws
        protocol = ws.protocol
        if protocol.state is not State.OPEN or ws.paused:
            return False
        try:  # enqueue, inline: this is every answer's path
            protocol.send_text(frame)
            ws.send_data()
        except Exception as error:
            logger.debug("writing a frame failed: %s", error)
            return False
        return True

    def enqueue(self, frame: bytes) -> bool:
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
        """Write the frame at once while the transport is not paused, as
        ``websockets.broadcast`` does; otherwise wait for the buffer to drain (flow
        control) or for the close to finish."""
        if self.write(frame):
            return
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frame, text=True)

    def push(self, frame: bytes) -> None:
        """The fan-out path, inline: written even while the transport is paused (the
        buffer is bounded by ``max_buffer`` instead)."""
        ws = self.ws
        if self._closing or ws.protocol.state is not State.OPEN:
            return
        if ws.transport.get_write_buffer_size() > self.max_buffer:
            self._slow_consumer()
            return
        if self.enqueue(frame):
            self.metrics.pushes_total += 1

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)

    def abort(self) -> None:
        self.ws.transport.abort()

    async def wait_closed(self) -> None:
        await self.ws.wait_closed()
