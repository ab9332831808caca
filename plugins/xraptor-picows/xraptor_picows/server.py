"""Serving an app with picows: the handshake gate, then picows' protocol, per connection.

picows decides an upgrade in a synchronous listener factory, and that factory is not
told the client's address. xraptor's connect guards are async and read the address,
so each connection starts with a small gate protocol (:class:`HandshakeGate`) instead:

1. it reads the HTTP request head (parsed by websockets' HTTP/1.1 parser, as on the
   websockets transport), then stops reading;
2. a plain GET (``/health``, ``/metrics``, the browser client, the demo page) gets
   ``app.http_endpoint(path)``, or 426; an upgrade gets 503 while the app drains;
   otherwise ``await app.admit(request, remote_ip)`` runs the Origin policy and the
   connect guards, and a refusal is answered with its HTTP status, as on websockets;
3. an admitted upgrade hands the connection to picows: the gate builds picows'
   server protocol, puts it on the transport (``transport.set_protocol``) and feeds it
   the bytes read so far; picows validates the upgrade and answers 101 (with the
   ``xraptor`` subprotocol when offered), then calls :class:`PicowsSocket`.

From then on picows parses and writes frames and xraptor does nothing per connection
beyond :mod:`xraptor_picows.connection`. picows negotiates no extension: there is no
permessage-deflate on this transport.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from picows import (
    WSAutoPingStrategy,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

# picows' server protocol; not in picows' stubs (ws_create_server builds it the same way)
from picows.picows import WSProtocol  # type: ignore[attr-defined]
from websockets.datastructures import Headers
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse
from websockets.streams import StreamReader

from xraptor.admission import Admitted, is_upgrade
from xraptor.context import serving
from xraptor.endpoints import DRAINING_RESPONSE
from xraptor.handshake import SUBPROTOCOL, http_response, offered_subprotocols
from xraptor.redaction import RedactingLogger
from xraptor.transport import ListenOptions

from .connection import Cork, PicowsSocket

if TYPE_CHECKING:
    from xraptor.server import XRaptor

logger = logging.getLogger("xraptor.picows")

#: seconds a client has from connecting to being upgraded or answered (guards included),
#: as websockets' ``open_timeout``
OPEN_TIMEOUT = 10.0

#: the largest request head accepted (picows' own limit)
MAX_HEAD = 16 * 1024 - 1

#: picows' initial read buffer per connection (it grows as messages need)
READ_BUFFER = 16 * 1024

#: no limit on a frame's size (``max_size=None``)
_NO_LIMIT = sys.maxsize

_UPGRADE_REQUIRED = http_response(
    426,
    "Upgrade Required: this is a WebSocket server; connect with a WebSocket client.",
    Headers([("Upgrade", "websocket")]),
)


class _PicowsLog(RedactingLogger):
    """picows' log lines as xraptor wants them: each connection's open and close (INFO in
    picows) and a client's protocol violation (ERROR in picows) at DEBUG, as websockets
    logs them; picows' byte-level trace (level 9: frames, handshake headers) never
    enabled; the rest scrubbed of credentials like every xraptor log line."""

    #: picows' messages about a peer's fault, logged at ERROR by picows
    _PEER_FAULTS = ("WS parser error",)

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.DEBUG and self.logger.isEnabledFor(level)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level < logging.WARNING or (isinstance(msg, str) and msg.startswith(self._PEER_FAULTS)):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


_PICOWS_LOG = _PicowsLog(logging.getLogger("xraptor.picows.protocol"))


def _parse_head(head: bytes) -> HttpRequest:
    """The request line and headers of ``head`` (the bytes up to the blank line).

    :raises Exception: websockets' parser's errors for a malformed request
    """
    reader = StreamReader()
    reader.feed_data(head)
    reader.feed_eof()
    parser = HttpRequest.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        request: HttpRequest = done.value
        return request
    raise ValueError("incomplete HTTP request")  # pragma: no cover (fed to EOF)


def _serialize(response: HttpResponse) -> bytes:
    """``response`` as bytes, marked as the connection's last."""
    headers = Headers(response.headers)
    if "Connection" not in headers:
        headers["Connection"] = "close"
    return HttpResponse(
        response.status_code, response.reason_phrase, headers, response.body
    ).serialize()


class HandshakeGate(asyncio.Protocol):
    """The first protocol of every connection: reads the request head, answers plain GETs
    and refusals, and hands admitted upgrades to picows (see the module doc)."""

    def __init__(self, server: PicowsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote_ip = ""
        self.buffer = bytearray()
        self.deciding = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's (the same methods; uvloop's need not subclass asyncio's)
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.server.gates.add(self)
        self.timer = asyncio.get_running_loop().call_later(OPEN_TIMEOUT, self.abort)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.deciding:
            return  # kept for picows
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or end + 4 > MAX_HEAD:
            if len(self.buffer) > MAX_HEAD:
                self.answer(http_response(400, "Bad Request: the request head is too large."))
            return
        try:
            request = _parse_head(bytes(self.buffer[: end + 4]))
        except Exception as error:
            logger.debug("invalid HTTP request from %s: %r", self.remote_ip, error)
            self.answer(http_response(400, "Bad Request: invalid HTTP request."))
            return
        self.deciding = True
        assert self.transport is not None
        self.transport.pause_reading()
        self.server.decide(self, request)

    def eof_received(self) -> bool:
        return False  # the client went away before an answer: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()
        if self.task is not None:
            self.task.cancel()

    def _done(self) -> None:
        self.server.gates.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def answer(self, response: HttpResponse) -> None:
        """Answer with ``response`` and close the connection."""
        self._done()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_serialize(response))
            transport.close()

    def abort(self) -> None:
        self._done()
        if self.transport is not None:
            self.transport.abort()

    def upgrade(self, socket: PicowsSocket, subprotocol: str | None) -> None:
        """Hand the connection to picows' protocol, which answers 101 and calls ``socket``."""
        self._done()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        protocol = self.server.picows_protocol(_choose(socket, subprotocol))
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = memoryview(bytes(self.buffer))
        self.buffer.clear()
        while data and not transport.is_closing():
            target = protocol.get_buffer(len(data))
            size = min(len(target), len(data))
            target[:size] = data[:size]
            protocol.buffer_updated(size)
            data = data[size:]
        if not transport.is_closing():
            transport.resume_reading()


def _choose(
    socket: PicowsSocket, subprotocol: str | None
) -> Callable[[WSUpgradeRequest], PicowsSocket | WSUpgradeResponseWithListener]:
    """picows' listener factory for one admitted connection."""

    def choose(request: WSUpgradeRequest) -> PicowsSocket | WSUpgradeResponseWithListener:
        if subprotocol is None:
            return socket
        response = WSUpgradeResponse.create_101_response(
            extra_headers={"Sec-WebSocket-Protocol": subprotocol}
        )
        return WSUpgradeResponseWithListener(response, socket)

    return choose


class PicowsServer:
    """A picows server serving one app (the :class:`~xraptor.transport.Listener`)."""

    def __init__(self, app: XRaptor, options: ListenOptions) -> None:
        self.app = app
        self.options = options
        self.server: asyncio.Server | None = None
        #: connections still in their handshake
        self.gates: set[HandshakeGate] = set()
        #: upgraded connections, until they end
        self.sockets: set[PicowsSocket] = set()
        #: the tasks serving connections (``app._open``)
        self.tasks: set[asyncio.Task[None]] = set()
        self.cork: Cork | None = None
        ping = options.ping_interval
        timeout = options.ping_timeout
        self._protocol_options: Mapping[str, object] = {
            "host_port": None,
            "ws_path": None,
            "is_client_side": False,
            "logger": _PICOWS_LOG,
            "disconnect_on_exception": True,
            "websocket_handshake_timeout": None,  # the gate bounds the handshake
            "enable_auto_ping": ping is not None,
            "auto_ping_idle_timeout": ping if ping is not None else 20.0,
            # picows needs the pong within the interval: a longer ping_timeout is cut to it
            "auto_ping_reply_timeout": min(
                timeout if timeout is not None else ping or 20.0, ping or 20.0
            ),
            "auto_ping_strategy": WSAutoPingStrategy.PING_WHEN_IDLE,
            "enable_auto_pong": True,
            "max_frame_size": options.max_size if options.max_size is not None else _NO_LIMIT,
            "extra_headers": None,
            "read_buffer_init_size": READ_BUFFER,
        }

    @property
    def port(self) -> int:
        if self.server is not None:
            for sock in self.server.sockets:
                port: int = sock.getsockname()[1]
                return port
        return 0

    async def start(self) -> None:
        options = self.options
        self.server = await asyncio.get_running_loop().create_server(
            lambda: HandshakeGate(self),
            options.host,
            options.port,
            ssl=options.ssl,
            reuse_port=options.reuse_port or None,
        )

    # ----- per connection -------------------------------------------------------------

    def picows_protocol(self, choose: Callable[[WSUpgradeRequest], object]) -> Any:
        """picows' server protocol for one connection, with ``choose`` as its listener factory."""
        return WSProtocol(ws_listener_factory=choose, **self._protocol_options)

    def decide(self, gate: HandshakeGate, request: HttpRequest) -> None:
        """Answer a plain GET, refuse while draining, or admit the upgrade (async)."""
        app = self.app
        serving(app)  # guards' class-level calls mean this app
        path = request.path.split("?", 1)[0]
        if not is_upgrade(request) or path == app.health_path:
            found = app.http_endpoint(path)
            gate.answer(found if found is not None else _UPGRADE_REQUIRED)
        elif app.draining:
            gate.answer(DRAINING_RESPONSE)
        else:
            gate.task = asyncio.get_running_loop().create_task(self._admit(gate, request))

    async def _admit(self, gate: HandshakeGate, request: HttpRequest) -> None:
        app = self.app
        try:
            outcome = await app.admit(request, gate.remote_ip)
        except Exception:
            logger.exception("admitting a WebSocket upgrade from %s failed", gate.remote_ip)
            gate.answer(http_response(500, "Internal Server Error"))
            return
        finally:
            gate.task = None
        if not isinstance(outcome, Admitted):
            gate.answer(outcome)
            return
        offered = offered_subprotocols(request.headers)
        socket = PicowsSocket(
            app,
            request,
            gate.remote_ip,
            outcome.identity,
            max_size=self.options.max_size,
            max_queue=self.options.max_queue,
            close_timeout=self.options.close_timeout,
            sockets=self.sockets,
            cork=self._cork(),
        )
        gate.upgrade(socket, SUBPROTOCOL if SUBPROTOCOL in offered else None)
        if socket.task is not None:
            self.tasks.add(socket.task)
            socket.task.add_done_callback(self.tasks.discard)

    def _cork(self) -> Cork:
        """The listener's :class:`Cork` (made in the loop, at the first connection)."""
        if self.cork is None:
            self.cork = Cork(asyncio.get_running_loop())
        return self.cork

    # ----- shutdown -------------------------------------------------------------------

    async def close_connections(self, timeout: float) -> None:
        """Stop listening; close every connection with 1001, dropping those still open
        after ``timeout`` seconds."""
        if self.server is not None:
            self.server.close()
        for gate in tuple(self.gates):
            gate.abort()
        if self.cork is not None:
            self.cork.stop()  # from now on pushes go out at once, before the close frames
        sockets = tuple(self.sockets)
        for socket in sockets:
            socket.send_close(1001, "server shutting down")
        ends = [socket.ended for socket in sockets if not socket.ended.done()]
        if ends:
            _, pending = await asyncio.wait(ends, timeout=timeout)
            if pending:
                for socket in sockets:
                    socket.abort()
                await asyncio.wait(ends)

    async def wait_closed(self) -> None:
        """Stop listening and wait until every connection's task ended."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.tasks:
            await asyncio.gather(*tuple(self.tasks), return_exceptions=True)


async def listen(app: XRaptor, options: ListenOptions) -> PicowsServer:
    """Serve ``app`` with picows (the ``picows`` transport)."""
    server = PicowsServer(app, options)
    await server.start()
    return server
