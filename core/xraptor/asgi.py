"""The ASGI transport: an xraptor app served by uvicorn, hypercorn or granian, or
mounted in Starlette / FastAPI.

``server.asgi_app()`` returns an :class:`AsgiApp` (ASGI 3). Its WebSocket scope
speaks the same protocol with the same routes, middlewares, connect guards,
Origin policy, streams, rooms and limits as the native server; HTTP requests
under it serve ``/health``, ``/metrics`` and the browser client, relative to
where it is mounted. The antenna starts with the ASGI lifespan, or on first use
where the host sends none (a mounted app: Starlette gives mounts no lifespan
events); :meth:`AsgiApp.lifespan` plugs it into the host's own lifespan.

ASGI writes are awaitable only, so :class:`AsgiConnection` keeps an outgoing
queue per connection: an answer is written by the task that produced it; a push
to a connection with nothing queued takes the first step of the ASGI ``send``
inline (done when the server writes without waiting, as uvicorn does while its
transport is writable), and one writer task per connection finishes that send
and writes what queues behind it while there is a backlog, the queue bounded by
``max_buffer`` (past it, the slow-consumer policy closes the connection with
1013). Keepalive pings, the inbound queue and the closing handshake belong to
the ASGI server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from .admission import Admitted
from .connection import Closed, Connection
from .context import serving
from .endpoints import DRAINING_RESPONSE
from .handshake import SUBPROTOCOL, http_response
from .metrics import Metrics
from .plugins import get_plugins
from .reader import _finish

if TYPE_CHECKING:
    from .server import XRaptor

logger = logging.getLogger("xraptor.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: outgoing bytes queued past which an answer waits for the queue to drain
HIGH_WATER = 2**16

#: close code for a message over ``max_size`` (RFC 6455 "message too big")
_TOO_BIG = 1009

#: the ASGI extension that lets a WebSocket handshake be refused with an HTTP response
DENIAL_EXTENSION = "websocket.http.response"


class _Inbox:
    """The reader's view of an ASGI connection's received messages: the ASGI server
    validated UTF-8 already (``text`` is never checked), and whether another message
    is waiting cannot be seen, so the reader yields after each one (fairness)."""

    __slots__ = ()
    text = False

    def __len__(self) -> int:
        return 1


_INBOX = _Inbox()


class AsgiConnection(Connection):
    """A client connection carried by an ASGI server's WebSocket scope."""

    __slots__ = (
        "_asgi_receive",
        "_asgi_send",
        "_close_sent",
        "_ended",
        "_headers",
        "_max_size",
        "_open",
        "_outbox",
        "_queued",
        "_room_waiters",
        "_writer",
        "_writing",
        "scope",
    )

    transport = "asgi"

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        identity: object,
        headers: Headers,
        max_buffer: int,
        max_size: int | None,
        metrics: Metrics,
    ) -> None:
        client = scope.get("client")
        super().__init__(
            _request_target(scope),
            str(client[0]) if client else "",
            identity,
            max_buffer,
            metrics,
        )
        #: the ASGI scope of the connection
        self.scope = scope
        self._headers = headers
        self._asgi_receive = receive
        self._asgi_send = send
        self._max_size = max_size
        self.receive = self._receive
        self.frames = _INBOX
        self._outbox: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._writing = False
        self._writer: asyncio.Task[None] | None = None
        self._room_waiters: list[asyncio.Future[None]] = []
        self._open = True
        self._close_sent = False
        self._ended = asyncio.get_running_loop().create_future()

    # ----- reading -------------------------------------------------------------------

    async def _receive(self) -> bytes | str:
        while True:
            message = await self._asgi_receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data: bytes | str | None = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                limit = self._max_size
                if limit is not None and len(data) > limit:
                    await self.close(_TOO_BIG, f"message over {limit} bytes")
                    continue  # the disconnect follows
                return data
            if kind == "websocket.disconnect":
                self._gone()
                raise Closed(f"closed by the client ({message.get('code', 1005)})")

    # ----- writing -------------------------------------------------------------------

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    def is_open(self) -> bool:
        return self._open

    def buffered(self) -> int:
        return self._queued

    def write(self, frame: bytes) -> bool:
        """Never now: an ASGI write is awaited (:meth:`send`)."""
        return False

    def enqueue(self, frame: bytes) -> bool:
        """Write a frame now if nothing is queued and the ASGI server's ``send`` does
        not wait, else queue it: one writer task per connection writes the queue out."""
        if not self._open:
            return False
        if self._writing:
            self._outbox.append(frame)
            self._queued += len(frame)
            return True
        # the fan-out path: no task per push while the server writes without waiting.
        # The first step runs in the pushing task, what follows a wait in the writer
        # task: fine for sends that hold nothing bound to a task across that wait
        # (uvicorn's: an Event; hypercorn's: an asyncio.Lock and drain())
        sending = self._asgi_send({"type": "websocket.send", "text": frame.decode()})
        if type(sending) is not types.CoroutineType:  # another awaitable: its own task
            self._writing = True
            self._writer = asyncio.get_running_loop().create_task(self._write_out(None, sending))
            return True
        try:
            waiting_for = sending.send(None)
        except StopIteration:
            return True
        except Exception as error:  # the client is gone
            logger.debug("writing to an ASGI connection failed: %r", error)
            self._gone()
            return False
        # it waits (the transport is paused): a writer task finishes it, then the queue
        self._writing = True
        self._writer = asyncio.get_running_loop().create_task(
            self._write_out(None, _finish(sending, waiting_for))
        )
        return True

    async def send(self, frame: bytes) -> None:
        """Write the frame in this task when nothing else is being written, else queue
        it behind what is (waiting while more than ``HIGH_WATER`` bytes are queued)."""
        while self._open and self._queued > HIGH_WATER:
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            await waiter
        if not self._open:
            return
        self._outbox.append(frame)
        self._queued += len(frame)
        if not self._writing:
            self._writing = True
            await self._write_out(frame)

    async def _write_out(self, mine: bytes | None, started: Awaitable[None] | None = None) -> None:
        """Write the queue out: up to ``mine`` in a request's task (what is queued
        behind it goes on in a writer task, so a busy stream cannot keep a request
        from finishing), or all of it in the writer task (``mine`` is ``None``),
        after ``started``, a send that :meth:`enqueue` began and that waits."""
        outbox = self._outbox
        try:
            if started is not None:
                await started
                if self._room_waiters and self._queued <= HIGH_WATER:
                    self._wake()
            while outbox and self._open:
                frame = outbox.popleft()
                self._queued -= len(frame)
                await self._asgi_send({"type": "websocket.send", "text": frame.decode()})
                if self._room_waiters and self._queued <= HIGH_WATER:
                    self._wake()
                if frame is mine:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the client is gone (servers raise OSError or their own)
            logger.debug("writing to an ASGI connection failed: %r", error)
            self._gone()
        finally:
            self._writing = False
            if mine is None:
                self._writer = None
            if outbox and self._open:  # queued behind ``mine``, or left by a cancellation
                self._writing = True
                self._writer = asyncio.get_running_loop().create_task(self._write_out(None))

    def _wake(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ----- closing -------------------------------------------------------------------

    def _gone(self) -> None:
        """The connection ended (a disconnect, a failed write, an abort)."""
        if not self._ended.done():
            self._open = False
            self._outbox.clear()
            self._queued = 0
            self._ended.set_result(None)
            self._wake()
            self.lost()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame (the ASGI server runs the closing handshake); what is
        still queued is dropped."""
        self._open = False
        self._outbox.clear()
        self._queued = 0
        self._wake()
        if self._close_sent or self._ended.done():
            return
        self._close_sent = True
        try:
            await self._asgi_send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception as error:
            logger.debug("closing an ASGI connection failed: %r", error)
            self._gone()

    def abort(self) -> None:
        """Stop reading and end the app's call for this connection: the ASGI server
        then drops the connection."""
        self._gone()
        reader = self.reader
        if reader is not None and not reader.done():
            self.cancelled_reader = True
            reader.cancel()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._ended)


class AsgiApp:
    """An :class:`~xraptor.XRaptor` app as an ASGI 3 application (``server.asgi_app()``).

    - ``websocket`` scopes: the xraptor protocol. The Origin policy and the connect
      guards run on ``websocket.connect``; a refusal is the HTTP status through the
      ``websocket.http.response`` extension where the server has it (uvicorn,
      hypercorn, granian), else a close before the accept (servers answer 403).
    - ``http`` scopes: ``GET`` of ``/health``, ``/metrics`` and
      ``/_xraptor/client.js`` relative to the mount (``root_path`` stripped); 404
      for other paths.
    - ``lifespan``: starts the app (antenna, ``xraptor_startup`` hooks) and shuts it
      down (drain, close the connections with 1001, ``xraptor_shutdown`` hooks,
      close the antenna). Without lifespan events (mounted apps), the first request
      starts the app; :meth:`lifespan` hands the same start and shutdown to the host.
    """

    def __init__(self, server: XRaptor) -> None:
        self.server = server
        self._started = False
        self._starting: asyncio.Future[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"xraptor's ASGI app does not serve {kind!r} scopes")

    # ----- start and shutdown ---------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    async def startup(self) -> None:
        """Start the app (its antenna and ``xraptor_startup`` hooks) if not started yet
        (concurrent first requests wait for the same start)."""
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        starting = self._starting
        try:
            await asyncio.shield(starting)
        finally:
            if starting.done() and (starting.cancelled() or starting.exception() is not None):
                self._starting = None  # the next request tries again

    async def _start(self) -> None:
        server = self.server
        if server.running:
            raise RuntimeError(
                "this app is already served by its own server (start()); "
                "serve it either natively or through ASGI"
            )
        antenna = await server._start_app()
        server._hosted = self
        try:
            await get_plugins().call_lifecycle("xraptor_startup", server=server)
        except BaseException:
            server._hosted = None
            await antenna.close()
            raise
        self._started = True
        logger.info("xraptor serving through ASGI (antenna %s, transport asgi)", antenna.name)

    async def shutdown(self) -> None:
        """Drain, close every connection with 1001, run the ``xraptor_shutdown`` hooks
        and close the antenna (a second call waits for the same shutdown)."""
        if not self._started:
            return
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._stopping)

    async def _shut_down(self) -> None:
        server = self.server
        server._draining = True
        try:
            await server._drain()
            await asyncio.gather(*(self._close(c) for c in tuple(server._connections)))
            await get_plugins().call_lifecycle("xraptor_shutdown", server=server)
        finally:
            self._started = False
            self._starting = None
            server._hosted = None
            await server.room_tasks.settle()
            await server.antenna.close()
            self._stopping = None
            logger.info("xraptor stopped serving through ASGI")

    async def _close(self, connection: Connection) -> None:
        try:
            async with asyncio.timeout(self.server.close_timeout):
                await connection.close(1001, "server shutting down")
                await connection.wait_closed()
        except TimeoutError:
            connection.abort()

    def lifespan(self, app: object = None) -> contextlib.AbstractAsyncContextManager[None]:
        """The app's start and shutdown for the host's lifespan:
        ``FastAPI(lifespan=server.asgi_app().lifespan)``, or inside your own
        ``async with server.asgi_app().lifespan(): ...``."""
        return self._run()

    @contextlib.asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    logger.exception("xraptor could not start")
                    await send({"type": "lifespan.startup.failed", "message": repr(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as error:
                    logger.exception("xraptor's shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": repr(error)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----- HTTP -----------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.startup()
        if scope.get("method") not in ("GET", "HEAD"):
            response = http_response(405, "Method Not Allowed: xraptor serves GET only here.")
            response.headers["Allow"] = "GET, HEAD"
        else:
            found = self.server.http_endpoint(_relative_path(scope))
            response = found if found is not None else http_response(404, "Not Found")
        await _send_response(send, "http.response", response, head=scope.get("method") == "HEAD")

    # ----- WebSocket ------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.startup()
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        server = self.server
        serving(server)  # class-level calls in guards and handlers mean this app
        headers = Headers(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
        )
        if server.draining:
            await _deny(scope, send, DRAINING_RESPONSE)
            return
        path = _request_target(scope)
        client = scope.get("client")
        outcome = await server.admit(HttpRequest(path, headers), str(client[0]) if client else "")
        if not isinstance(outcome, Admitted):
            await _deny(scope, send, outcome)
            return
        offered = scope.get("subprotocols") or ()
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": SUBPROTOCOL if SUBPROTOCOL in offered else None,
            }
        )
        connection = AsgiConnection(
            scope,
            receive,
            send,
            identity=outcome.identity,
            headers=headers,
            max_buffer=server._max_buffer,
            max_size=server._serve_options.get("max_size"),
            metrics=server.metrics,
        )
        await server._open(connection)


def _full_path(scope: Scope) -> str:
    """The request path as the client sent it (``root_path`` included): ``raw_path``,
    not percent-decoded, as the native transport has it, where the server gives it and
    it is the same path."""
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    full = path if not root or path.startswith(root) else root + path
    raw: bytes | None = scope.get("raw_path")
    if raw:
        sent = raw.decode("latin-1")
        if unquote(sent) == full:
            return sent
    return full


def _request_target(scope: Scope) -> str:
    """The path and query as the client sent them (the native transport's
    ``connection.path`` and what the connect guards read)."""
    query = scope.get("query_string", b"").decode("latin-1")
    return _full_path(scope) + (f"?{query}" if query else "")


def _relative_path(scope: Scope) -> str:
    """The path relative to where the app is mounted (``root_path`` stripped)."""
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


async def _deny(scope: Scope, send: Send, response: HttpResponse) -> None:
    """Refuse a WebSocket handshake with ``response``, or with a close where the ASGI
    server has no denial extension (it then answers 403 itself)."""
    if DENIAL_EXTENSION in (scope.get("extensions") or {}):
        await _send_response(send, "websocket.http.response", response)
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": ""})


async def _send_response(
    send: Send, prefix: str, response: HttpResponse, head: bool = False
) -> None:
    await send(
        {
            "type": f"{prefix}.start",
            "status": response.status_code,
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in response.headers.raw_items()
                if name.lower() != "connection"
            ],
        }
    )
    await send({"type": f"{prefix}.body", "body": b"" if head else response.body or b""})
