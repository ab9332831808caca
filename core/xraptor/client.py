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

from .client_reconnect import (
    ConnectionLost,
    Reconnect,
    State,
    Token,
    is_permanent,
    resolve_token,
)
from .client_stream import ClientError, Stream, is_error, parse_response
from .handshake import handshake_headers
from .protocol import MethodType, Response
from .redaction import redacting_logger, scrub

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
        # checks a token now, and that no Authorization header comes with one
        placeholder = token if isinstance(token, str) else None if token is None else "checked"
        connect_options["additional_headers"] = handshake_headers(
            placeholder, self._headers, self._extra_headers
        )
        connect_options.setdefault("logger", redacting_logger("websockets.client"))
        self.url = url
        self.timeout = timeout
        self.raise_errors = raise_errors
        self.max_queue = max_queue
        self.reconnects = 0
        self._reconnect = _reconnect_policy(reconnect)
        self._connect_options = connect_options
        self._ws: ClientWebSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._streams: dict[str, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_error: BaseException | None = None
        self._state: State = "new"
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        #: set whenever the client is not reconnecting: requests waiting for it wake up
        self._settled = asyncio.Event()
        self._settled.set()
        self._given_up: ConnectionLost | None = None

    # ----- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> Self:
        """Open the connection (``async with`` does it for you). The first connection
        is not retried: its failure is raised, reconnect or not."""
        if self._ws is not None or self._state == "reconnecting":
            raise RuntimeError("the client is already connected")
        async with asyncio.timeout(self.timeout):
            ws = await self._handshake(await resolve_token(self._token))
        self._closing = False
        self._given_up = None
        self._attach(ws)
        if self._reconnect is not None:
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(self._reconnect)
            )
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
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        ws, self._ws = self._ws, None
        if self._state != "new":
            self._state = "closed"
        self._settled.set()
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

    # ----- reconnecting -------------------------------------------------------------------

    async def _until_open(self, deadline: float) -> None:
        """Wait while the client reconnects (until ``deadline``, loop time)."""
        if self._state != "reconnecting":
            return
        try:
            async with asyncio.timeout_at(deadline):
                while self.state == "reconnecting":  # the property: not narrowed by mypy
                    await self._settled.wait()
        except TimeoutError:
            raise TimeoutError(
                f"not reconnected to {scrub(self.url)} in time: the request was not sent"
            ) from None
        if self.state != "open":
            raise ConnectionLost(
                self._given_up.message
                if self._given_up is not None
                else "the client was closed while it was reconnecting"
            )

    def _dropped(self, error: BaseException) -> None:
        """The connection dropped: fail what was in flight; streams wait to be re-opened."""
        self._state = "reconnecting"
        self._settled.clear()
        logger.info("the connection to %s dropped (%s); reconnecting", self.url, error)

        def lost(what: str) -> ConnectionLost:
            failure = ConnectionLost(
                f"the connection dropped before {what} ({error}); nothing is retried",
                error if isinstance(error, ConnectionClosed) else None,
            )
            failure.__cause__ = error
            return failure

        for future in self._pending.values():
            if not future.done():
                future.set_exception(lost("the reply (the server may have handled the request)"))
        for stream in tuple(self._streams.values()):
            stream._dropped(lost("the SUB's acknowledgment"))

    async def _supervise(self, policy: Reconnect) -> None:
        """Reconnect each time the reader ends, until :meth:`close` or giving up."""
        failures = 0
        while True:
            reader = self._reader
            if reader is not None:
                await asyncio.wait((reader,))  # not ``await reader``: cancelling us must not
            if self._closing:
                return
            last: BaseException | None = self._closed_error
            while True:
                if policy.gives_up(failures):
                    self._give_up(failures, last)
                    return
                await asyncio.sleep(policy.delay(failures))
                failures += 1
                try:
                    async with asyncio.timeout(self.timeout):
                        token = await resolve_token(self._token)
                except Exception as failure:  # the token's source failed: try again later
                    logger.warning("the token function failed: %r; retrying", failure)
                    last = failure
                    continue
                try:
                    handshake_headers(token, self._headers, self._extra_headers)
                except (TypeError, ValueError) as bad:  # a bug: no attempt will do better
                    self._give_up(failures, bad)
                    return
                try:
                    async with asyncio.timeout(self.timeout):
                        ws = await self._handshake(token)
                except Exception as failure:
                    last = failure
                    if is_permanent(failure):
                        self._give_up(failures, failure)
                        return
                    logger.info("reconnecting to %s failed: %r", self.url, failure)
                    continue
                break
            self._attach(ws)
            if await self._resubscribe():
                failures = 0
                self.reconnects += 1
                logger.info("reconnected to %s (%d streams)", self.url, len(self._streams))

    async def _resubscribe(self) -> bool:
        """Re-open every stream on the new connection; ``False`` if it dropped meanwhile."""
        streams = tuple(self._streams.values())
        acks: list[asyncio.Future[None]] = []
        try:
            for stream in streams:  # SUB frames first: later requests come after them
                acks.append(await stream._resubscribe())
        except ConnectionClosed:
            return False
        if self._state != "open":
            return False
        self._settled.set()
        if acks:
            await asyncio.wait(acks, timeout=self.timeout)
        dropped = False
        for stream, ack in zip(streams, acks, strict=True):
            if ack.cancelled():  # closed by the application meanwhile
                continue
            if not ack.done():
                ack.cancel()
                stream._end(
                    ConnectionLost(
                        f"no acknowledgment of the stream's SUB {stream.route} within "
                        f"{self.timeout} s after reconnecting"
                    )
                )
                self._unsub_soon(stream)
            elif (error := ack.exception()) is None:
                stream._resubscribed()
            elif isinstance(error, ConnectionLost):
                dropped = True  # re-opened on the next connection
            else:
                stream._end(error)  # refused now (a ClientError)
        return not dropped and self._state == "open"

    def _give_up(self, attempts: int, last: BaseException | None) -> None:
        message = scrub(f"gave up reconnecting to {self.url} after {attempts} attempt(s): {last!r}")
        logger.warning("%s", message)
        self._given_up = ConnectionLost(message)
        self._state = "closed"
        self._ws = None
        self._settled.set()
        for stream in tuple(self._streams.values()):
            ended = ConnectionLost(message)
            ended.__cause__ = last
            stream._end(ended)

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
        if self._given_up is not None:
            raise ConnectionLost(self._given_up.message)
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
            if self._reconnect is None or isinstance(closed, ConnectionLost):
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
        if self._reconnect is not None and not self._closing:
            self._dropped(error)
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
