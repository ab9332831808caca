"""The asyncio client: requests, responses and streams over one WebSocket.

::

    async with xraptor.Client("ws://127.0.0.1:8765") as client:
        reply = await client.post("/send_message_to_chat_room", {"chat_id": "lobby", ...})
        async with client.subscribe("/chat_messages", {"chat_id": "lobby"}) as stream:
            async for push in stream:
                print(push.payload)

One reader task reads every frame and hands it, by ``request_id``, to the
future of a pending request or to the queue of an open stream. With ``reconnect``,
a supervisor task waits for the reader to end and, unless :meth:`Client.close`
ended it, opens a new connection (backoff with jitter, the token asked for again)
and re-opens every stream there (new request ids, ``since`` its last positions).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.frames import Close, CloseCode

from .client_reconnect import ConnectionLost, Reconnect, Reconnector, State, Token, resolve_token
from .client_stream import ClientError, Stream, is_error, parse_response
from .handshake import handshake_headers
from .protocol import MethodType, Response
from .redaction import redacting_logger

logger = redacting_logger("xraptor.client")

__all__ = ["Client", "ClientError", "ConnectionLost", "Reconnect", "Stream"]

Payload = str | dict[str, Any] | list[Any]


class ClientWebSocket(Protocol):
    """What the client uses of its WebSocket (a websockets ``ClientConnection``, or
    :class:`xraptor.testing.TestClient`'s in-process one)."""

    async def send(self, message: bytes, *, text: bool | None = None) -> None: ...

    async def recv(self, decode: bool | None = None) -> str | bytes: ...

    async def close(self) -> None: ...


def _encode_payload(payload: Payload) -> str:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict | list):
        return orjson.dumps(payload).decode()
    raise TypeError(f"payload must be a str, dict or list, got {type(payload).__name__}")


def _reconnect_policy(reconnect: bool | Reconnect) -> Reconnect | None:
    if isinstance(reconnect, Reconnect):
        return reconnect
    if reconnect is True:
        return Reconnect()
    if reconnect is False:
        return None
    raise TypeError(f"reconnect must be a bool or an xraptor.Reconnect, got {reconnect!r:.80}")


class Client:
    """An asyncio xraptor client over one WebSocket connection.

    :param url: the server's ``ws://`` or ``wss://`` URL
    :param timeout: seconds to wait for a reply before raising :class:`TimeoutError`
    :param raise_errors: raise :class:`ClientError` for error responses (default);
        ``False`` returns them like any other response
    :param max_queue: unread messages buffered per stream; a stream whose consumer
        falls further behind ends with :class:`ClientError` code ``client_overflow``
    :param token: a bearer token, sent as ``Authorization: Bearer <token>`` on the
        handshake for the server's connect guards (``handshake.token``); or a function,
        sync or async, returning one, called on every connect and reconnect
    :param headers: extra HTTP headers for the handshake (``{"X-Api-Key": ...}``)
    :param reconnect: ``True`` (or a :class:`Reconnect` policy) to reconnect when the
        connection drops, until :meth:`close` (see the README's "Reconnecting")
    :param connect_options: passed to :func:`websockets.asyncio.client.connect`

    A server that refuses the handshake (an Origin it does not allow, a guard's
    ``Refuse``) makes :meth:`connect` raise websockets'
    :class:`~websockets.exceptions.InvalidStatus`: ``error.response.status_code``
    is the HTTP status (401, 403 ...), ``error.response.body`` the reason.
    websockets' DEBUG log of the handshake has the token and credentials redacted.

    :ivar reconnects: how many times the client reconnected (and re-opened its streams)
    """

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        *,
        raise_errors: bool = True,
        max_queue: int = 1024,
        token: Token | None = None,
        headers: Mapping[str, str] | None = None,
        reconnect: bool | Reconnect = False,
        **connect_options: Any,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_queue <= 0:
            raise ValueError(f"max_queue must be positive, got {max_queue!r}")
        if token is not None and not isinstance(token, str) and not callable(token):
            raise TypeError(f"token must be a str or a function, got {type(token).__name__}")
        self._token = token
        self._headers = dict(headers or {})
        self._extra_headers = connect_options.get("additional_headers")
        # a token is checked now, a function's on each connect; with either, no
        # Authorization header may be given
        connect_options["additional_headers"] = handshake_headers(
            token if isinstance(token, str) else None, self._headers, self._extra_headers
        )
        if token is not None and not isinstance(token, str):
            handshake_headers("placeholder", self._headers, self._extra_headers)
        connect_options.setdefault("logger", redacting_logger("websockets.client"))
        self.url = url
        self.timeout = timeout
        self.raise_errors = raise_errors
        self.max_queue = max_queue
        self.reconnects = 0
        policy = _reconnect_policy(reconnect)
        self._reconnector = Reconnector(self, policy) if policy is not None else None
        self._connect_options = connect_options
        self._ws: ClientWebSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._streams: dict[str, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_error: BaseException | None = None
        self._state: State = "new"
        self._closing = False

    # ----- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> Self:
        """Open the connection (``async with`` does it for you). The first connection
        is not retried: its failure is raised, reconnect or not."""
        if self._ws is not None or self._state == "reconnecting":
            raise RuntimeError("the client is already connected")
        async with asyncio.timeout(self.timeout):
            ws = await self._handshake(await resolve_token(self._token))
        self._closing = False
        self._attach(ws)
        if self._reconnector is not None:
            self._reconnector.start()
        return self

    async def _handshake(self, token: str | None) -> ClientWebSocket:
        self._connect_options["additional_headers"] = handshake_headers(
            token, self._headers, self._extra_headers
        )
        return await self._open_websocket()

    async def _open_websocket(self) -> ClientWebSocket:
        """Open the WebSocket (the seam :class:`xraptor.testing.TestClient` replaces)."""
        return await connect(self.url, **self._connect_options)

    def _attach(self, ws: ClientWebSocket) -> None:
        self._ws = ws
        self._closed_error = None
        self._state = "open"
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))

    async def close(self) -> None:
        """Close the connection and stop reconnecting; pending requests and open streams
        end (a stream's iteration stops)."""
        self._closing = True
        if self._reconnector is not None:
            await self._reconnector.stop()
        ws, self._ws = self._ws, None
        if self._state != "new":
            self._state = "closed"
        if self._reconnector is not None:
            self._reconnector.settled.set()  # requests waiting for a reconnection fail
        if ws is None:
            return
        await ws.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        # streams that a dropped connection left waiting for a reconnection
        closed = ConnectionClosedOK(None, Close(CloseCode.NORMAL_CLOSURE, ""))
        for stream in tuple(self._streams.values()):
            stream._end(closed)
        for task in tuple(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether the connection is unusable now (not open yet, dropped, or closed)."""
        return self._ws is None or self._closed_error is not None

    @property
    def state(self) -> State:
        """``"new"``, ``"open"``, ``"reconnecting"`` or ``"closed"`` (by :meth:`close`,
        or the client gave up reconnecting)."""
        return self._state

    # ----- requests -----------------------------------------------------------------------

    async def request(
        self,
        method: MethodType | str,
        route: str,
        payload: Payload = "",
        header: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Response:
        """Send one GET, POST or PUT and return the reply.

        While a reconnecting client is reconnecting, the request waits for the new
        connection, within the same ``timeout`` as its reply.

        :raises ClientError: the reply is an error response (unless ``raise_errors=False``)
        :raises TimeoutError: no reply (or no connection) within ``timeout`` (default:
            the client's)
        :raises ConnectionLost: a reconnecting client's connection dropped before the
            reply (nothing is retried), or the client gave up reconnecting
        :raises websockets.exceptions.ConnectionClosed: the connection closed first
        """
        method = MethodType(method.upper()) if isinstance(method, str) else method
        if method in (MethodType.SUB, MethodType.UNSUB):
            raise ValueError("use client.subscribe() for SUB and UNSUB")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        await self._until_open(deadline)
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Response] = loop.create_future()
        self._pending[request_id] = future
        try:
            await self._send(request_id, route, method, _encode_payload(payload), header or {})
            async with asyncio.timeout_at(deadline):
                response = await future
        finally:
            self._pending.pop(request_id, None)
        if self.raise_errors and is_error(response):
            raise ClientError.from_response(response)
        return response

    async def get(
        self, route: str, payload: Payload = "", header: dict[str, Any] | None = None
    ) -> Response:
        return await self.request(MethodType.GET, route, payload, header)

    async def post(
        self, route: str, payload: Payload = "", header: dict[str, Any] | None = None
    ) -> Response:
        return await self.request(MethodType.POST, route, payload, header)

    async def put(
        self, route: str, payload: Payload = "", header: dict[str, Any] | None = None
    ) -> Response:
        return await self.request(MethodType.PUT, route, payload, header)

    def subscribe(
        self,
        route: str,
        payload: Payload = "",
        header: dict[str, Any] | None = None,
        *,
        since: Mapping[str, str] | None = None,
    ) -> Stream:
        """A stream: ``async with`` sends SUB, iterating yields its messages, exit sends UNSUB.

        The SUB asks for an acknowledgment (header ``{"ack": true}``): entering returns
        once the server has registered the stream, run its handler and subscribed the
        rooms it joined, and raises :class:`ClientError` when the server refused it.
        A reconnecting client re-opens the stream after a dropped connection.

        :param since: positions to recover from, per room with history
            (``{"<room id>": "<epoch>:<offset>"}``, e.g. an earlier stream's
            :attr:`~xraptor.client.Stream.positions`): the stream first receives what
            each room published after its position, or an ``unrecovered`` notice
        :raises TypeError: ``since`` is not a mapping of str to str
        """
        return Stream(
            self, route, _encode_payload(payload), header or {}, self.max_queue, since=since
        )

    async def _until_open(self, deadline: float) -> None:
        """Wait while the client reconnects (until ``deadline``, loop time)."""
        if self._reconnector is not None:
            await self._reconnector.until_open(deadline)

    # ----- plumbing -----------------------------------------------------------------------

    async def _send(
        self,
        request_id: str,
        route: str,
        method: MethodType,
        payload: str,
        header: dict[str, Any],
    ) -> None:
        ws = self._ws
        reconnector = self._reconnector
        if reconnector is not None and reconnector.given_up is not None:
            raise ConnectionLost(reconnector.given_up.message)
        if ws is None:
            raise RuntimeError("the client is not connected; use 'async with Client(...)'")
        if self._closed_error is not None:
            raise self._closed_error
        frame = orjson.dumps(
            {
                "request_id": request_id,
                "payload": payload,
                "header": header,
                "route": route,
                "method": method.value,
            }
        )
        try:
            await ws.send(frame, text=True)
        except ConnectionClosed as closed:
            if reconnector is None or isinstance(closed, ConnectionLost):
                raise
            raise ConnectionLost(f"the connection dropped ({closed})", closed) from closed

    async def _read(self, ws: ClientWebSocket) -> None:
        error: BaseException
        try:
            while True:
                raw = await ws.recv(decode=False)
                response = parse_response(raw)
                if response is None:
                    logger.warning("ignored a frame that is not a response: %.48r", raw[:48])
                    continue
                self._dispatch(response)
        except ConnectionClosed as closed:
            error = closed
        except Exception as failure:  # pragma: no cover - defensive
            logger.exception("the client's reader failed")
            error = failure
        self._closed_error = error
        if self._reconnector is not None and not self._closing:
            self._reconnector.dropped(error)
            return
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        for stream in tuple(self._streams.values()):
            stream._end(error)

    def _dispatch(self, response: Response) -> None:
        request_id = response.request_id
        future = self._pending.get(request_id)
        if future is not None:
            if not future.done():
                future.set_result(response)
            return
        stream = self._streams.get(request_id)
        if stream is not None:
            stream._deliver(response)
            return
        if is_error(response) and not request_id:
            logger.warning("error response with no request_id: %.200s", response.payload)
        else:
            logger.debug("dropped a message for no open request: %.64r", request_id)

    def _unsub_soon(self, stream: Stream) -> None:
        if self.closed:
            return

        async def unsub() -> None:
            with contextlib.suppress(ConnectionClosed, RuntimeError):
                await self._send(
                    stream.request_id, stream.route, MethodType.UNSUB, stream.payload, stream.header
                )

        task = asyncio.get_running_loop().create_task(unsub())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
