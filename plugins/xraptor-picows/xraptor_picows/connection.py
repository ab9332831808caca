"""One WebSocket of the picows transport: picows' callbacks, and xraptor's connection seam.

picows hands over frames, not messages, and leaves most of RFC 6455 above the frame
to its user. :class:`PicowsSocket` (picows' listener for one connection) adds it:

- it reassembles fragmented messages and fails the connection with 1002 on a
  continuation without a message, a new message inside a fragmented one, a reserved
  bit set (no extension is negotiated) or a close code a peer may not send;
- it enforces ``max_size`` on the whole message (1009); picows' own frame limit is
  set to the same size, so an oversized frame is refused before it is buffered;
- it validates UTF-8 as a fragmented text message arrives (1007 at the first bad
  fragment); an unfragmented text message is validated by the reader, which parses
  bytes and closes with 1007 when orjson's refusal was invalid UTF-8 (``inbox.text``);
- it runs the closing handshake: it echoes the peer's close frame and closes TCP, or
  sends its own and waits for the peer's (``close_timeout``, then the connection is
  dropped);
- it bounds the messages waiting to be read (``max_queue``: reading from the socket
  pauses past it) and tracks the transport's flow control (``pause_writing``).

:class:`PicowsConnection` is the connection the app sees; its :meth:`~PicowsConnection.write`
writes a frame now (picows' ``send`` is synchronous), and ``receive`` returns the next
message from the socket's inbox, waiting on a future only when the inbox is empty.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

import xraptor.cork
from xraptor.connection import Closed, Connection
from xraptor.cork import LIMIT as CORK_LIMIT
from xraptor.cork import text_frames

if TYPE_CHECKING:
    from websockets.http11 import Request as HttpRequest

    from xraptor.server import XRaptor

logger = logging.getLogger("xraptor.connection")

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE

#: close codes a peer may send (RFC 6455 section 7.4, as websockets accepts them); any
#: code from 3000 to 4999 too
_PEER_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

#: the longest close reason (a control frame carries at most 125 bytes, 2 of them the code)
_MAX_REASON = 123

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class Cork(xraptor.cork.Cork):
    """The listener's pushes waiting for the end of the loop iteration
    (:class:`xraptor.cork.Cork`), its flush specialised: :meth:`PicowsConnection.flush`
    inline, since it runs once per delivery (a change to one is a change to both)."""

    __slots__ = ()

    def flush(self) -> None:
        self.scheduled = False
        dirty: list[Any] = self.dirty
        self.dirty = []
        for connection in dirty:
            pending = connection._pending
            if pending is None:
                continue  # flushed already (an answer was written after the push)
            connection._pending = None
            try:  # PicowsConnection.write_frames, inline
                if connection.socket.open and not connection._ws.is_close_frame_sent:
                    if type(pending) is bytes:
                        connection._send(_TEXT, pending)
                        connection.metrics.pushes_total += 1
                    else:
                        connection._underlying.write(text_frames(pending))
                        connection.metrics.pushes_total += len(pending)
            except Exception:  # one connection's failure must not hold the others' pushes
                logger.exception("writing the pushes waiting failed")


class _Binary:
    """A binary message waiting in the inbox (text messages wait as plain ``bytes``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Inbox(collections.deque[bytes | _Binary]):
    """The messages received and not read yet (the reader's :class:`~xraptor.connection.Inbox`):
    its length says whether one is waiting; ``text`` whether the last one read was text."""

    __slots__ = ("text",)

    def __init__(self) -> None:
        super().__init__()
        self.text = True


class PicowsSocket(WSListener):
    """picows' listener for one WebSocket, created once the connect guards admitted it."""

    __slots__ = (
        "_close_timer",
        "_decoder",
        "_drained",
        "_parts",
        "_parts_size",
        "_parts_text",
        "_resume_at",
        "_waiter",
        "app",
        "close_received",
        "close_sent",
        "close_timeout",
        "connection",
        "cork",
        "ended",
        "failed",
        "gone",
        "identity",
        "inbox",
        "loop",
        "max_queue",
        "max_size",
        "open",
        "reading_paused",
        "remote_ip",
        "request",
        "sockets",
        "task",
        "transport",
        "underlying",
        "writing_paused",
    )

    def __init__(
        self,
        app: XRaptor,
        request: HttpRequest,
        remote_ip: str,
        identity: object,
        *,
        max_size: int | None,
        max_queue: int | None,
        close_timeout: float,
        sockets: set[PicowsSocket],
        cork: Cork,
    ) -> None:
        super().__init__()
        self.app = app
        #: the upgrade request (path with query, headers) as the connect guards saw it
        self.request = request
        self.remote_ip = remote_ip
        self.identity = identity
        self.max_size = max_size
        self.max_queue = max_queue
        self._resume_at = max_queue // 4 if max_queue is not None else 0
        self.close_timeout = close_timeout
        #: the listener's set of open sockets (this one is in it while connected)
        self.sockets = sockets
        #: the listener's pushes waiting for the end of the loop iteration
        self.cork = cork
        self.loop = asyncio.get_running_loop()
        self.transport: WSTransport | None = None
        self.underlying: asyncio.Transport | None = None
        self.connection: PicowsConnection | None = None
        #: the task serving the connection (``app._open``)
        self.task: asyncio.Task[None] | None = None
        self.inbox = Inbox()
        self._waiter: asyncio.Future[bytes | _Binary] | None = None
        self._parts: list[bytes] | None = None
        self._parts_text = False
        self._parts_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        #: whether frames may be written (no close frame sent, still connected)
        self.open = False
        self.close_sent = False
        self.close_received = False
        #: the connection was failed (a protocol violation): nothing more is read
        self.failed = False
        self.gone = False
        self.reading_paused = False
        self.writing_paused = False
        self._drained: list[asyncio.Future[None]] = []
        self._close_timer: asyncio.TimerHandle | None = None
        self.ended: asyncio.Future[None] = self.loop.create_future()

    # ----- picows' callbacks --------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.underlying = transport.underlying_transport
        self.open = True
        self.sockets.add(self)
        app = self.app
        connection = self.connection = PicowsConnection(self, app._max_buffer, app)
        self.task = self.loop.create_task(app._open(connection))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if self.failed and kind is not _CLOSE:
            return  # failed: only the peer's close frame matters now
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self.fail(1002, "reserved bits must be 0")
        elif kind is _TEXT or kind is _BINARY:
            # (picows refused a frame over max_size already: its max_frame_size)
            if self._parts is not None:
                self.fail(1002, "expected a continuation frame")
            elif frame.fin:
                data = frame.get_payload_as_bytes()
                self._deliver(data if kind is _TEXT else _Binary(data))
            else:
                self._start_message(frame, kind is _TEXT)
        elif kind is _CONTINUATION:
            self._continue_message(frame)
        elif kind is _CLOSE:
            self._on_close(frame)
        # pings are answered by picows (enable_auto_pong), pongs need nothing

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.open = False
        self.gone = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.sockets.discard(self)
        self._wake_reader()
        self._wake_writers()
        if not self.ended.done():
            self.ended.set_result(None)
        if self.connection is not None:
            self.connection.lost()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writers()

    # ----- messages -------------------------------------------------------------------

    def _start_message(self, frame: WSFrame, text: bool) -> None:
        data = frame.get_payload_as_bytes()
        self._parts = [data]
        self._parts_size = len(data)
        self._parts_text = text
        if text:
            self._decoder = _utf8_decoder()
            self._check_utf8(data, final=False)

    def _continue_message(self, frame: WSFrame) -> None:
        parts = self._parts
        if parts is None:
            self.fail(1002, "unexpected continuation frame")
            return
        size = self._parts_size + frame.payload_size
        if self.max_size is not None and size > self.max_size:
            self.fail(1009, f"message over {self.max_size} bytes")
            return
        data = frame.get_payload_as_bytes()
        parts.append(data)
        self._parts_size = size
        fin = frame.fin
        if self._parts_text and not self._check_utf8(data, final=fin):
            return
        if fin:
            message = b"".join(parts)
            self._parts = None
            self._decoder = None
            self._deliver(message if self._parts_text else _Binary(message))

    def _check_utf8(self, data: bytes, final: bool) -> bool:
        decoder = self._decoder
        assert decoder is not None
        try:
            decoder.decode(data, final)
        except UnicodeDecodeError:
            self.fail(1007, "invalid UTF-8 in a text message")
            return False
        return True

    def _deliver(self, message: bytes | _Binary) -> None:
        if self.close_sent or self.failed:
            return  # the closing handshake began: nothing more is served
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        inbox = self.inbox
        inbox.append(message)
        if self.max_queue is not None and len(inbox) >= self.max_queue and not self.reading_paused:
            self.reading_paused = True
            assert self.underlying is not None
            self.underlying.pause_reading()

    async def receive(self) -> bytes:
        """The next message's data (``bytes`` of JSON, text or binary).

        :raises Closed: once the connection ended and every message was read
        """
        inbox = self.inbox
        if inbox:
            message = inbox.popleft()
            if self.reading_paused and len(inbox) <= self._resume_at:
                self.reading_paused = False
                if not self.gone:
                    assert self.underlying is not None
                    self.underlying.resume_reading()
        elif self.gone or self.close_received or self.failed:
            raise Closed("the WebSocket connection is closed")
        else:
            waiter = self._waiter = self.loop.create_future()
            message = await waiter
        if type(message) is bytes:
            inbox.text = True
            return message
        assert isinstance(message, _Binary)
        inbox.text = False
        return message.data

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(Closed("the WebSocket connection is closed"))

    # ----- writing ----------------------------------------------------------------------

    async def drained(self) -> None:
        """Wait until the transport takes writes again (or the connection closed)."""
        waiter = self.loop.create_future()
        self._drained.append(waiter)
        await waiter

    def _wake_writers(self) -> None:
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ----- closing ----------------------------------------------------------------------

    def _on_close(self, frame: WSFrame) -> None:
        # picows checked the payload's length and the reason's UTF-8, not every code
        code: int = frame.get_close_code().value
        if frame.payload_size >= 2 and not (code in _PEER_CLOSE_CODES or 3000 <= code < 5000):
            self.fail(1002, f"invalid close code {code}")
            return
        self.close_received = True
        if self._parts is not None:
            # as websockets does (its reference behaviour for kosoku's case 7.1.5)
            self.fail(1002, "incomplete fragmented message")
            return
        assert self.transport is not None
        if not self.close_sent:
            # echo the peer's close frame as it came (websockets does the same)
            self.close_sent = True
            self.open = False
            if frame.payload_size >= 2:
                reason = frame.get_close_message() or b""
                self.transport.send_close(WSCloseCode(code), reason)
            else:
                self.transport.send(_CLOSE, b"")
            self._wake_writers()
        # both close frames were exchanged: the server closes TCP (RFC 6455 section 7.1.1)
        self.transport.disconnect()
        self._wake_reader()

    def send_close(self, code: int, reason: str) -> None:
        """Send a close frame (once) and wait for the peer's, within ``close_timeout``."""
        if self.close_sent or self.gone:
            return
        assert self.transport is not None
        if self.connection is not None:
            self.connection.flush()  # the pushes made before the close go first
        self.close_sent = True
        self.open = False
        encoded = reason.encode()
        if len(encoded) > _MAX_REASON:
            encoded = encoded[:_MAX_REASON].decode(errors="ignore").encode()
        self.transport.send_close(WSCloseCode(code), encoded)
        self._wake_writers()
        # the reader waits on until the handshake ends (as on websockets): nothing more
        # is delivered meanwhile, and requests in flight are cancelled when it ended
        if self.close_received:
            self.transport.disconnect()
        else:
            self._close_timer = self.loop.call_later(self.close_timeout, self.abort)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (a protocol violation): drop what is unread, read no more
        messages, send a close frame with ``code``."""
        if self.failed or self.gone:
            return
        self.failed = True
        self.inbox.clear()
        self._parts = None
        self._decoder = None
        logger.debug("failing connection from %s with %d: %s", self.remote_ip, code, reason)
        self.send_close(code, reason)
        self._wake_reader()

    async def close(self, code: int, reason: str) -> None:
        """Run the closing handshake (bounded by ``close_timeout``) and wait until the
        connection ended."""
        self.send_close(code, reason)
        await asyncio.shield(self.ended)

    def abort(self) -> None:
        """Drop the connection now."""
        self._close_timer = None
        if self.underlying is not None and not self.gone:
            self.underlying.abort()


class PicowsConnection(Connection):
    """A client connection of the picows transport (:attr:`socket` is picows' side)."""

    __slots__ = ("_cork", "_pending", "_pending_size", "_send", "_underlying", "_ws", "socket")

    transport = "picows"
    frames: Inbox

    def __init__(self, socket: PicowsSocket, max_buffer: int, app: XRaptor) -> None:
        super().__init__(
            socket.request.path, socket.remote_ip, socket.identity, max_buffer, app.metrics
        )
        #: the picows listener of this connection (its transport: ``socket.transport``)
        self.socket = socket
        self.receive = socket.receive
        self.frames = socket.inbox
        assert socket.transport is not None and socket.underlying is not None
        self._ws = socket.transport
        self._send: Any = socket.transport.send
        self._underlying = socket.underlying
        self._cork = socket.cork
        #: pushes waiting for the end of the loop iteration (:class:`Cork`), or None
        self._pending: bytes | list[bytes] | None = None
        self._pending_size = 0

    @property
    def headers(self) -> Mapping[str, str]:
        return self.socket.request.headers

    def is_open(self) -> bool:
        return self.socket.open

    def buffered(self) -> int:
        return self._underlying.get_write_buffer_size()

    def write(self, frame: bytes) -> bool:
        """Write a text frame now, unless the connection is closing or its transport
        asked to pause writing (then ``False``: the caller awaits :meth:`send`)."""
        socket = self.socket
        if not socket.open or socket.writing_paused:
            return False
        if self._pending is not None:
            self.flush()  # the pushes made before it go first
        self._send(_TEXT, frame)
        return True

    def enqueue(self, frame: bytes) -> bool:
        """Write a text frame now, even while the transport asked to pause."""
        if not self.socket.open:
            return False
        if self._pending is not None:
            self.flush()
        self._send(_TEXT, frame)
        return True

    async def send(self, frame: bytes) -> None:
        """Write the frame once the transport takes writes; drop it if the connection
        closed meanwhile."""
        socket = self.socket
        while socket.open and socket.writing_paused:
            await socket.drained()
        if socket.open:
            if self._pending is not None:
                self.flush()
            self._send(_TEXT, frame)

    def push(self, frame: bytes) -> None:
        """The fan-out path: the frame waits for the end of the loop iteration and is
        written with the connection's other pushes of that iteration (:class:`Cork`);
        written even while the transport is paused (the buffer is bounded by
        ``max_buffer`` instead)."""
        if self._closing or not self.socket.open:
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
        if self._underlying.get_write_buffer_size() > self.max_buffer:
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
        """Write the pushes waiting, in one socket write."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self.write_frames([pending] if isinstance(pending, bytes) else pending)

    def write_frames(self, pending: list[bytes]) -> None:
        """Write text frames in one socket write, unless a close frame went out (ours,
        or picows' own: a protocol error, a ping unanswered). :meth:`Cork.flush` has a
        copy inline."""
        if not self.socket.open or self._ws.is_close_frame_sent:
            return
        if len(pending) == 1:
            self._send(_TEXT, pending[0])
        else:
            self._underlying.write(text_frames(pending))
        self.metrics.pushes_total += len(pending)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.socket.close(code, reason)

    def abort(self) -> None:
        self.socket.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.socket.ended)
