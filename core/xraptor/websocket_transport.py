"""The ``websockets`` transport: xraptor's own server, where the hot-path tricks live.

:class:`WebsocketsConnection` implements the :class:`~xraptor.connection.Connection`
seam on a ``websockets`` server connection. Answers are written inline, without a
task (``protocol.send_text`` then ``send_data``, as ``websockets.broadcast`` does);
pushes, each room message having been encoded once for all its members, wait for the
end of the loop iteration and go out together (:mod:`xraptor.cork`): write to a
connection through its methods, not through :attr:`WebsocketsConnection.ws`, or its
pushes waiting may be overtaken. The slow-consumer policy reads the transport's write
buffer directly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse
from websockets.protocol import State

from .admission import Admitted, is_upgrade
from .connection import Connection
from .context import serving
from .cork import LIMIT as CORK_LIMIT
from .cork import Cork, text_frames
from .deflate import (
    SharedCompressor,
    SharedCompressors,
    SharedDeflateFactory,
    shared_compressor,
)
from .endpoints import DRAINING_RESPONSE
from .handshake import IDENTITY_ATTRIBUTE, identity_of, select_subprotocol, set_identity
from .hookspecs import hookimpl
from .metrics import Metrics
from .redaction import redacting_logger
from .transport import ListenOptions

if TYPE_CHECKING:
    from .plugins import TransportRegistry
    from .server import XRaptor

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


class GuardedServerConnection(ServerConnection):
    """websockets' server connection, with a slot for what the connect guards returned
    (see :func:`~xraptor.handshake.set_identity`).

    A slot, not an attribute: CPython keeps an instance's attributes in a compact array
    laid out by the keys its class shares, and an attribute added long after
    ``__init__`` (the guards run once the upgrade request arrived) may find no room
    there, which moves all of the connection's attributes into a dict of its own
    (about 1.3 KiB more per connection, depending on how many connections were
    opening when the first one passed the guards).
    """

    __slots__ = (IDENTITY_ATTRIBUTE,)


class WebsocketsConnection(Connection):
    """A client connection of xraptor's own ``websockets`` server (:attr:`ws`)."""

    __slots__ = ("_cork", "_pending", "_pending_size")

    transport = "websockets"
    ws: ServerConnection
    frames: FrameQueue

    def __init__(self, ws: ServerConnection, max_buffer: int, metrics: Metrics, cork: Cork) -> None:
        remote = ws.remote_address
        super().__init__(
            ws.request.path if ws.request is not None else "/",
            str(remote[0]) if remote else "",
            identity_of(ws),
            max_buffer,
            metrics,
        )
        self.ws = ws
        queue = ws.recv_messages.frames
        #: the frames received and not read yet (see :class:`FrameQueue`)
        self.frames = queue.queue = FrameQueue(queue.queue)
        #: the listener's pushes waiting for the end of the loop iteration
        self._cork = cork
        #: this connection's pushes waiting (see :mod:`xraptor.cork`), or None
        self._pending: bytes | list[bytes] | None = None
        self._pending_size = 0
        # when the connection is lost, cancel whatever its requests wait for (websockets'
        # connection-lost future: no task of ours waits for the close)
        ws.connection_lost_waiter.add_done_callback(self.lost)

    def receive(self) -> Coroutine[Any, Any, bytes]:
        """The next message's data, as bytes (a method, not a ``partial`` per connection)."""
        return self.ws.recv(decode=False)

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
        if self._pending is not None:
            self.flush()  # the pushes made before it go first
        try:  # enqueue, inline: this is every answer's path
            protocol.send_text(frame)
            ws.send_data()
        except Exception as error:
            logger.debug("writing a frame failed: %s", error)
            return False
        return True

    def enqueue(self, frame: bytes) -> bool:
        """Hand one text frame to websockets and the transport, as ``broadcast()`` does."""
        if self._pending is not None:
            self.flush()
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
        if self._pending is not None:
            self.flush()
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frame, text=True)

    def push(self, frame: bytes) -> None:
        """The fan-out path: the frame waits for the end of the loop iteration and is
        written with this connection's other pushes of the iteration (see
        :mod:`xraptor.cork`); written even while the transport is paused (the buffer is
        bounded by ``max_buffer`` instead)."""
        ws = self.ws
        if self._closing or ws.protocol.state is not State.OPEN:
            return
        pending = self._pending
        if pending is not None:
            if isinstance(pending, bytes):
                self._pending = [pending, frame]
            else:
                pending.append(frame)
            self._pending_size += len(frame)
            if self._pending_size > CORK_LIMIT:
                self.flush()  # the next push checks the buffer against max_buffer again
            return
        if ws.transport.get_write_buffer_size() > self.max_buffer:
            self._slow_consumer()
            return
        self._pending = frame  # a list only from the second (no container per push)
        self._pending_size = len(frame)
        cork = self._cork
        if cork.immediate:
            self.flush()
            return
        cork.dirty.append(self)
        if not cork.scheduled:
            cork.schedule()

    def flush(self) -> None:
        """Write the pushes waiting, in one socket write (dropped once the connection
        is closing, as a push then would be)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        frames = [pending] if isinstance(pending, bytes) else pending
        if self.ws.protocol.state is State.OPEN and self.write_frames(frames):
            self.metrics.pushes_total += len(frames)

    def write_frames(self, payloads: list[bytes]) -> bool:
        """Write text frames in one socket write: built here when no extension was
        negotiated (websockets writes what its protocol makes at once, so nothing of
        its own waits meanwhile), else made and written by websockets (its compression).
        Whether they were written."""
        ws = self.ws
        protocol = ws.protocol
        try:
            if protocol.extensions or protocol.expect_continuation_frame:
                for payload in payloads:
                    protocol.send_text(payload)
                data = protocol.data_to_send()
                if all(data):
                    ws.transport.write(b"".join(data))
                else:  # an end of stream among them (none while OPEN): as send_data does
                    for chunk in data:
                        if chunk:
                            ws.transport.write(chunk)
                        elif ws.transport.can_write_eof():
                            ws.transport.write_eof()
                        else:
                            ws.transport.close()
            else:
                ws.transport.write(text_frames(payloads))
        except Exception as error:
            logger.debug("writing frames failed: %s", error)
            return False
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._pending is not None:
            self.flush()  # what was pushed goes before the close frame
        await self.ws.close(code, reason)

    def abort(self) -> None:
        self.ws.transport.abort()

    async def wait_closed(self) -> None:
        await self.ws.wait_closed()


class SharedDeflateConnection(WebsocketsConnection):
    """A connection that negotiated ``compression="shared"``: pushes are compressed by
    the process's :class:`~xraptor.deflate.SharedCompressor`, each room message's
    tail once for all members (see :mod:`xraptor.deflate`).

    A push is written as a whole frame to the transport, below websockets' protocol
    (the hot path: no Frame object, no extension call, no copy per member).
    That is sound because websockets writes what its protocol produces at once, so
    nothing of its own waits in ``protocol.writes``, and :meth:`push` writes only while
    the protocol is OPEN; while a fragmented message is being sent (xraptor sends none)
    the push goes to websockets instead, which refuses it as it would any frame.
    """

    __slots__ = ("_compressor",)

    def __init__(
        self,
        ws: ServerConnection,
        max_buffer: int,
        metrics: Metrics,
        cork: Cork,
        compressor: SharedCompressor,
    ) -> None:
        super().__init__(ws, max_buffer, metrics, cork)
        self._compressor = compressor

    def enqueue(self, frame: bytes) -> bool:
        ws = self.ws
        if ws.protocol.expect_continuation_frame:
            return super().enqueue(frame)  # refused by websockets, as any frame would be
        if self._pending is not None:
            self.flush()
        try:
            ws.transport.write(self._compressor.websocket_frame(frame))
        except Exception as error:
            logger.debug("writing a frame failed: %s", error)
            return False
        return True

    def push(self, frame: bytes) -> None:
        """Compressed now, in the fan-out's order (the compressor keeps the tail of the
        message being fanned out), then kept with the iteration's other pushes."""
        if self._closing or self.ws.protocol.state is not State.OPEN:
            return  # not compressed for nothing
        super().push(self._compressor.websocket_frame(frame))

    def write_frames(self, payloads: list[bytes]) -> bool:
        """Write whole frames (:meth:`push` made them) in one socket write."""
        ws = self.ws
        if ws.protocol.expect_continuation_frame:
            return False  # websockets would refuse any frame now
        try:
            ws.transport.write(payloads[0] if len(payloads) == 1 else b"".join(payloads))
        except Exception as error:
            logger.debug("writing frames failed: %s", error)
            return False
        return True


# ----- the listener -----------------------------------------------------------------


class WebsocketsListener:
    """A ``websockets`` server serving one app (see :mod:`xraptor.transport`)."""

    def __init__(self, app: XRaptor, server: Server, cork: Cork) -> None:
        self.app = app
        self.server = server
        #: the connections' pushes waiting for the end of the loop iteration
        self.cork = cork

    @property
    def port(self) -> int:
        for sock in self.server.sockets:
            port: int = sock.getsockname()[1]
            return port
        return 0

    async def close_connections(self, timeout: float) -> None:
        """Close every connection with 1001 within ``timeout``.

        websockets bounds the closing handshake by ``close_timeout`` only once the
        close frame is written; a client that stopped reading keeps it unwritten, so
        connections still open past the bound are aborted here.
        """
        self.cork.stop()  # what was pushed goes before the close frames
        server = self.server
        server.close()
        try:
            await asyncio.wait_for(asyncio.shield(server.wait_closed()), timeout)
        except TimeoutError:
            for connection in tuple(self.app._connections):
                connection.abort()
            await server.wait_closed()

    async def wait_closed(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def listen(app: XRaptor, options: ListenOptions) -> WebsocketsListener:
    """Serve ``app`` with a ``websockets`` server."""

    def handle(ws: ServerConnection) -> Coroutine[Any, Any, None]:
        # websockets' handler of one connection, run in websockets' task for it
        compressor = shared_compressor(ws.protocol.extensions) if compressors else None
        if compressor is None:
            return app._open(WebsocketsConnection(ws, app._max_buffer, app.metrics, cork))
        return app._open(
            SharedDeflateConnection(ws, app._max_buffer, app.metrics, cork, compressor)
        )

    async def process_request(
        connection: ServerConnection, request: HttpRequest
    ) -> HttpResponse | None:
        serving(app)  # guards' class-level calls mean this app (the connection's task)
        path = request.path.split("?", 1)[0]
        if not is_upgrade(request) or path == app.health_path:
            return app.http_endpoint(path)
        if app.draining:
            return DRAINING_RESPONSE
        remote = connection.remote_address
        outcome = await app.admit(request, str(remote[0]) if remote else "")
        if isinstance(outcome, Admitted):
            set_identity(connection, outcome.identity)
            return None
        return outcome

    compressors = SharedCompressors() if options.compression == "shared" else None
    cork = Cork(asyncio.get_running_loop())
    server = await serve(
        handle,
        options.host,
        options.port,
        process_request=process_request,
        create_connection=GuardedServerConnection,
        select_subprotocol=select_subprotocol,
        logger=redacting_logger("websockets.server"),
        reuse_port=options.reuse_port or None,
        ssl=options.ssl,
        close_timeout=options.close_timeout,
        max_size=options.max_size,
        max_queue=options.max_queue,
        ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout,
        # "shared": our extension instead of websockets' (see xraptor.deflate)
        compression="deflate" if options.compression == "deflate" else None,
        extensions=[SharedDeflateFactory(compressors)] if compressors else None,
    )
    return WebsocketsListener(app, server, cork)


@hookimpl
def xraptor_register_transports(registry: TransportRegistry) -> None:
    """The built-in transport registers through the same hook as plugins."""
    registry.add("websockets", listen)
