"""An app's client in the same process: no port, no socket.

::

    from xraptor.testing import TestClient

    async with TestClient(app) as client:
        reply = await client.get("/hello")

:class:`TestClient` is an :class:`xraptor.Client` whose WebSocket is a pair of
in-memory queues plugged into the app's ASGI application (``app.asgi_app()``):
the handshake goes through the Origin policy and the connect guards, then every
request through the same routes, middlewares, streams and rooms as over the
network. Requests, streams, timeouts and errors are the client's: a refused
handshake raises websockets' :class:`~websockets.exceptions.InvalidStatus`, a
closed connection :class:`~websockets.exceptions.ConnectionClosed`.

The first TestClient that connects starts the app (its antenna and the
``xraptor_startup`` hooks) unless it is started already; the app is shut down when
the last TestClient that shares it closes, if a TestClient started it. An app
starts once (its antenna closes at shutdown, as with ``server.close()``): open
the clients that follow one another inside one that stays open, or inside
``async with app.asgi_app().lifespan():``, which then owns the start and shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import weakref
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, Protocol, Self
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
)
from websockets.frames import OK_CLOSE_CODES, Close, CloseCode
from websockets.http11 import Response as HttpResponse

from ..asgi import DENIAL_EXTENSION, AsgiApp, Message, Scope
from ..client import Client, ClientWebSocket
from ..server import XRaptor

logger = logging.getLogger("xraptor.testing")

__all__ = ["Connect", "TestClient"]

#: the ``Host`` the app sees (unless the client's headers give one)
HOST = "testserver"

#: the client's port in the ASGI scope
CLIENT_PORT = 50000

_State = Literal["connecting", "open", "closed", "refused"]


class TestClient(Client):
    """An :class:`xraptor.Client` for ``app`` in the same process, with no socket.

    :param app: the app to test; it is started on connect if it is not started yet
    :param path: the request path (and query) of the handshake, as a client would
        send it: ``"/"``, ``"/realtime?room=lobby"``
    :param timeout: seconds to wait for the handshake or a reply (as :class:`Client`)
    :param raise_errors: as :class:`Client`
    :param max_queue: as :class:`Client`
    :param token: a bearer token for the connect guards (``Authorization: Bearer``)
    :param headers: extra handshake headers (``{"Origin": ..., "X-Api-Key": ...}``);
        a ``Host`` header here replaces the default ``testserver``
    :param subprotocols: the subprotocols the client offers (none by default, like
        :class:`Client`; ``["xraptor"]`` like the browser client)
    :param remote_ip: the peer address the app sees (``handshake.remote_ip``,
        ``connection.remote_ip``)

    Use it as ``async with TestClient(app) as client:``, or call :meth:`connect` and
    :meth:`close`. Several TestClients may share one app (``async with
    TestClient(app) as alice, TestClient(app) as bob:``); the first starts it and the
    last one out shuts it down. An exception the app's ASGI call raises (a bug in
    xraptor: handlers' and guards' errors are answered) is raised by :meth:`connect`
    during the handshake; after it, it is logged and closes the connection with 1011.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: XRaptor,
        path: str = "/",
        timeout: float = 10.0,
        *,
        raise_errors: bool = True,
        max_queue: int = 1024,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        subprotocols: Iterable[str] = (),
        remote_ip: str = "127.0.0.1",
    ) -> None:
        if not isinstance(app, XRaptor):
            raise TypeError(f"TestClient needs an XRaptor app, got {type(app).__name__}")
        if not path.startswith("/"):
            raise ValueError(f"the path must start with '/', got {path!r}")
        super().__init__(
            f"ws://{HOST}{path}",
            timeout,
            raise_errors=raise_errors,
            max_queue=max_queue,
            token=token,
            headers=headers,
        )
        self.app = app
        #: the app's ASGI application, which this client drives
        self.asgi = app.asgi_app()
        self.path = path
        self.subprotocols = list(subprotocols)
        self.remote_ip = remote_ip
        self._holds_app = False

    # ----- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> Self:
        """Start the app if needed, then open the connection (as :meth:`Client.connect`).

        :raises websockets.exceptions.InvalidStatus: the app refused the handshake
            (``error.response.status_code``: 401, 403 ...)
        :raises TimeoutError: no answer to the handshake within ``timeout``
        """
        if self._ws is not None:
            raise RuntimeError("the client is already connected")
        await self._hold_app()
        try:
            return await super().connect()
        except BaseException:
            await self._release_app()
            raise

    async def close(self) -> None:
        """Close the connection (once the app has served its end of it), then shut the
        app down if this was the last TestClient of an app a TestClient started."""
        try:
            await super().close()
        finally:
            await self._release_app()

    async def _open_websocket(self) -> ClientWebSocket:
        socket = _InProcessWebSocket(self.asgi, self._scope(), self.timeout)
        await socket.open()
        return socket

    def _scope(self) -> Scope:
        """The ASGI ``websocket`` scope of the handshake, as a server would build it."""
        raw_path, _, query = self.path.partition("?")
        extra = Headers(self._connect_options["additional_headers"])
        headers = Headers()
        if "Host" not in extra:
            headers["Host"] = HOST
        headers["Upgrade"] = "websocket"
        headers["Connection"] = "Upgrade"
        headers["Sec-WebSocket-Key"] = base64.b64encode(os.urandom(16)).decode()
        headers["Sec-WebSocket-Version"] = "13"
        if self.subprotocols:
            headers["Sec-WebSocket-Protocol"] = ", ".join(self.subprotocols)
        headers.update(extra)
        if "User-Agent" not in headers:
            headers["User-Agent"] = "xraptor-testclient"
        return {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in headers.raw_items()
            ],
            "client": (self.remote_ip, CLIENT_PORT),
            "server": (HOST, 80),
            "subprotocols": list(self.subprotocols),
            "state": {},
            "extensions": {DENIAL_EXTENSION: {}},
        }

    # ----- the app's start and shutdown, shared by the TestClients of one app -------------

    async def _hold_app(self) -> None:
        if self._holds_app:
            return
        asgi = self.asgi
        sharing = _SHARING.setdefault(asgi, _Sharing())
        sharing.clients += 1
        self._holds_app = True
        try:
            if not asgi.started:
                if self.app.antenna.state == "closed":
                    raise RuntimeError(
                        "the app's antenna is closed: an app that was shut down (by the "
                        "last TestClient that left it) cannot start again. Give each test "
                        "a new app, or keep the app started around the TestClients that "
                        "follow one another (one TestClient that stays open, or "
                        "'async with app.asgi_app().lifespan():')"
                    )
                await asgi.startup()
                sharing.started = True
        except BaseException:
            await self._release_app()
            raise

    async def _release_app(self) -> None:
        if not self._holds_app:
            return
        self._holds_app = False
        sharing = _SHARING[self.asgi]
        sharing.clients -= 1
        if sharing.clients == 0 and sharing.started:
            sharing.started = False
            await self.asgi.shutdown()


class Connect(Protocol):
    """The ``xraptor_connect`` fixture: ``await xraptor_connect(path, **options)`` is a
    connected :class:`TestClient` of ``xraptor_app`` (``options`` as TestClient's)."""

    def __call__(self, path: str = "/", **options: Any) -> Awaitable[TestClient]: ...


@dataclass(slots=True)
class _Sharing:
    """The TestClients connected to one app, and whether one of them started it."""

    clients: int = 0
    started: bool = False


_SHARING: weakref.WeakKeyDictionary[AsgiApp, _Sharing] = weakref.WeakKeyDictionary()


class _InProcessWebSocket:
    """One WebSocket in memory: the ASGI app's ``receive`` and ``send`` on one side, on
    the other what :class:`Client` uses of websockets' ``ClientConnection`` (``send``,
    ``recv``, ``close``, raising :class:`ConnectionClosed` once closed).

    It plays the ASGI server's part: ``websocket.connect`` first, the handshake's
    outcome (``websocket.accept``, a ``websocket.http.response`` denial, or a close
    before the accept, which servers answer with 403), the closing handshake (the
    app's ``websocket.close`` is answered with ``websocket.disconnect``), and the end
    of the app's call (an unclosed connection is dropped: 1006; an exception: 1011).
    """

    def __init__(self, asgi: AsgiApp, scope: Scope, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._asgi = asgi
        self._scope = scope
        self._timeout = timeout
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._to_client: deque[str | bytes] = deque()
        self._arrived = asyncio.Event()
        self._handshake: asyncio.Future[None] = loop.create_future()
        self._state: _State = "connecting"
        self._denial: Message | None = None
        self._denial_body: list[bytes] = []
        # the close frames as the client's websockets connection would have them
        self._close_rcvd: Close | None = None
        self._close_sent: Close | None = None
        self._rcvd_then_sent: bool | None = None
        self._task: asyncio.Task[None] | None = None
        #: the subprotocol the app accepted
        self.subprotocol: str | None = None

    # ----- the client's side ----------------------------------------------------------

    async def open(self) -> None:
        """Run the app's call and wait for the handshake's outcome.

        :raises InvalidStatus: the app refused the handshake
        """
        self._task = asyncio.get_running_loop().create_task(self._serve())
        self._to_app.put_nowait({"type": "websocket.connect"})
        try:
            await self._handshake
        except BaseException:
            await self._end_app_call(0)
            raise

    async def send(self, message: bytes | str, *, text: bool | None = None) -> None:
        if self._state != "open":
            raise self._closed_error()
        if isinstance(message, str):
            self._to_app.put_nowait({"type": "websocket.receive", "text": message})
        elif text:
            self._to_app.put_nowait({"type": "websocket.receive", "text": message.decode()})
        else:
            self._to_app.put_nowait({"type": "websocket.receive", "bytes": bytes(message)})

    async def recv(self, decode: bool | None = None) -> str | bytes:
        """The next message the app sent; once they are read and the connection is
        closed, :class:`ConnectionClosed`."""
        while not self._to_client:
            if self._state != "open":
                raise self._closed_error()
            self._arrived.clear()
            await self._arrived.wait()
        data = self._to_client.popleft()
        if decode is False and isinstance(data, str):
            return data.encode()
        if decode is True and isinstance(data, bytes):
            return data.decode()
        return data

    async def close(self) -> None:
        """Close with 1000 (the app receives ``websocket.disconnect``) and wait, up to
        the timeout, for the app's call to end."""
        if self._state == "open":
            self._closed(Close(CloseCode.NORMAL_CLOSURE, ""), rcvd_then_sent=False)
            self._to_app.put_nowait(
                {"type": "websocket.disconnect", "code": CloseCode.NORMAL_CLOSURE, "reason": ""}
            )
        await self._end_app_call(self._timeout)

    def _closed_error(self) -> ConnectionClosed:
        rcvd, sent = self._close_rcvd, self._close_sent
        if (
            rcvd is not None
            and sent is not None
            and rcvd.code in OK_CLOSE_CODES
            and sent.code in OK_CLOSE_CODES
        ):
            return ConnectionClosedOK(rcvd, sent, self._rcvd_then_sent)
        return ConnectionClosedError(rcvd, sent, self._rcvd_then_sent)

    def _closed(self, frame: Close | None, *, rcvd_then_sent: bool | None) -> None:
        """The connection closed: both sides' close frame is ``frame`` (``None``: the
        connection was dropped without one)."""
        self._state = "closed"
        self._close_rcvd = self._close_sent = frame
        self._rcvd_then_sent = rcvd_then_sent if frame is not None else None
        self._arrived.set()

    async def _end_app_call(self, timeout: float) -> None:
        task = self._task
        if task is None or task.done():
            return
        if timeout > 0:
            await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                logger.warning(
                    "the app still served a closed test connection after %s s; cancelled",
                    timeout,
                )
        if not task.done():
            task.cancel()
            await asyncio.wait({task})

    # ----- the ASGI server's side -------------------------------------------------------

    async def _serve(self) -> None:
        try:
            await self._asgi(self._scope, self._receive, self._send)
        except Exception as error:
            if self._state == "connecting":
                self._state = "closed"
                self._fail_handshake(error)  # raised by connect(): a bug, not a refusal
                return
            logger.error("the app failed serving a test connection", exc_info=error)
            if self._state == "open":
                self._closed(Close(CloseCode.INTERNAL_ERROR, ""), rcvd_then_sent=True)
            return
        if self._state == "connecting":  # neither accepted nor refused: servers answer 403
            self._refuse(HTTPStatus.FORBIDDEN, [], b"")
        elif self._state == "open":  # returned without closing: servers drop the connection
            self._closed(None, rcvd_then_sent=None)

    async def _receive(self) -> Message:
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        state = self._state
        if state == "connecting":
            self._handshake_message(kind, message)
        elif state == "open" and kind == "websocket.send":
            data = message.get("bytes")
            self._to_client.append(data if data is not None else message.get("text") or "")
            self._arrived.set()
        elif state == "open" and kind == "websocket.close":
            # the client answers the close frame; the closing handshake is over
            code = message.get("code") or CloseCode.NORMAL_CLOSURE
            reason = message.get("reason") or ""
            self._closed(Close(code, reason), rcvd_then_sent=True)
            self._to_app.put_nowait(
                {"type": "websocket.disconnect", "code": code, "reason": reason}
            )
        elif state == "open":
            raise RuntimeError(f"unexpected ASGI message on an open WebSocket: {kind!r}")
        else:  # what ASGI servers do when the client is gone
            raise ConnectionResetError(f"{kind!r} sent on a closed test connection")

    def _handshake_message(self, kind: str, message: Message) -> None:
        if kind == "websocket.accept":
            self._state = "open"
            self.subprotocol = message.get("subprotocol")
            self._handshake.set_result(None)
        elif kind == "websocket.http.response.start":
            self._denial = message
        elif kind == "websocket.http.response.body" and self._denial is not None:
            self._denial_body.append(bytes(message.get("body") or b""))
            if not message.get("more_body", False):
                start = self._denial
                self._refuse(
                    start["status"], start.get("headers") or [], b"".join(self._denial_body)
                )
        elif kind == "websocket.close":  # a close before the accept: servers answer 403
            self._refuse(HTTPStatus.FORBIDDEN, [], b"")
        else:
            error = RuntimeError(f"unexpected ASGI message during the handshake: {kind!r}")
            self._fail_handshake(error)
            raise error

    def _refuse(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        """Refuse the handshake as websockets' client reports an HTTP answer."""
        self._state = "refused"
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        response = HttpResponse(
            status,
            reason,
            Headers((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers),
            body,
        )
        self._fail_handshake(InvalidStatus(response))

    def _fail_handshake(self, error: BaseException) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(error)
