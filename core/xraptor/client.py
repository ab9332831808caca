"""The asyncio client: requests, responses and streams over one WebSocket.

::

    async with xraptor.Client("ws://127.0.0.1:8765") as client:
        reply = await client.post("/send_message_to_chat_room", {"chat_id": "lobby", ...})
        async with client.subscribe("/chat_messages", {"chat_id": "lobby"}) as stream:
            async for push in stream:
                print(push.payload)

One reader task reads every frame and hands it, by ``request_id``, to the
future of a pending request or to the queue of an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from .handshake import handshake_headers
from .protocol import ACK, MethodType, Response
from .redaction import redacting_logger

logger = logging.getLogger("xraptor.client")

__all__ = ["Client", "ClientError", "Stream"]

Payload = str | dict[str, Any] | list[Any]

#: the code of the ClientError that ends a stream whose consumer fell behind
CLIENT_OVERFLOW = "client_overflow"


class ClientError(Exception):
    """The server answered with an error response (its header has ``"error"``).

    :ivar code: the machine-readable code (``unknown_route``, ``stream_in_use``, ...)
    :ivar message: the human-readable message
    :ivar response: the whole :class:`~xraptor.Response`
    """

    def __init__(self, code: str, message: str, response: Response | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.response = response

    @classmethod
    def from_response(cls, response: Response) -> ClientError:
        code = str(response.header.get("error", "error"))
        message = response.payload
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(response.payload)
            if isinstance(data, dict):
                code = str(data.get("code", code))
                message = str(data.get("message", message))
        return cls(code, message, response)


def _is_error(response: Response) -> bool:
    return "error" in response.header


def _encode_payload(payload: Payload) -> str:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict | list):
        return orjson.dumps(payload).decode()
    raise TypeError(f"payload must be a str, dict or list, got {type(payload).__name__}")


def _parse_response(raw: str | bytes) -> Response | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    request_id, payload, header = data.get("request_id"), data.get("payload"), data.get("header")
    if not isinstance(request_id, str) or not isinstance(payload, str):
        return None
    if not isinstance(header, dict):
        return None
    raw_method = data.get("method")
    try:
        method = MethodType(raw_method.upper()) if isinstance(raw_method, str) else None
    except ValueError:
        method = None  # "ERROR": an error frame whose method could not be read
    return Response(request_id, payload, header, method)


class Stream:
    """A SUB stream; use as ``async with client.subscribe(...) as stream: async for ...``.

    Every message of the stream is a :class:`~xraptor.Response`: the pushes,
    the SUB handler's own reply when it sends one, and gap notices (header
    ``{"notice": "gap"}``: the backend reconnected and messages may be missing).
    An error response ends the stream by raising :class:`ClientError`.
    """

    def __init__(
        self,
        client: Client,
        route: str,
        payload: str,
        header: dict[str, Any],
        max_queue: int,
    ) -> None:
        self._client = client
        self.route = route
        self.payload = payload
        self.header = header
        self.request_id = uuid.uuid4().hex
        self._queue: deque[Response] = deque()
        self._max_queue = max_queue
        self._wakeup = asyncio.Event()
        self._error: BaseException | None = None
        self._open = False
        self._ack: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Self:
        client = self._client
        client._streams[self.request_id] = self
        self._open = True
        self._ack = asyncio.get_running_loop().create_future()
        try:
            # the server answers {"ack": true} once the stream is registered, its handler
            # returned and the rooms it joined are subscribed; a refusal is an error frame
            await client._send(
                self.request_id,
                self.route,
                MethodType.SUB,
                self.payload,
                {**self.header, ACK: True},
            )
            async with asyncio.timeout(client.timeout):
                await self._ack
        except ClientError:
            self._open = False  # refused: the server holds no stream
            client._streams.pop(self.request_id, None)
            raise
        except BaseException:
            # no answer in time, or cancelled: the stream may still open on the server
            self._open = False
            client._streams.pop(self.request_id, None)
            client._unsub_soon(self)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Send UNSUB (unless the stream already ended) and stop receiving."""
        if not self._open:
            return
        self._open = False
        client = self._client
        client._streams.pop(self.request_id, None)
        if self._error is None and not client.closed:
            with contextlib.suppress(ConnectionClosed):
                await client._send(
                    self.request_id, self.route, MethodType.UNSUB, self.payload, self.header
                )

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Response:
        while True:
            if self._queue:
                response = self._queue.popleft()
                if _is_error(response):
                    error = ClientError.from_response(response)
                    self._end(error)
                    raise error
                return response
            if self._error is not None:
                if isinstance(self._error, ConnectionClosedOK):
                    raise StopAsyncIteration
                raise self._error
            if not self._open:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    # ----- called by the client's reader ----------------------------------------------

    def _deliver(self, response: Response) -> None:
        ack = self._ack
        if ack is not None and not ack.done():
            if _is_error(response):
                ack.set_exception(ClientError.from_response(response))
                return
            if response.header.get(ACK) is True:
                ack.set_result(None)
                return
        if len(self._queue) < self._max_queue:
            self._queue.append(response)
        else:
            self._end(
                ClientError(
                    CLIENT_OVERFLOW,
                    f"more than {self._max_queue} unread messages on stream "
                    f"{self.request_id}; the stream was ended",
                )
            )
        self._wakeup.set()

    def _end(self, error: BaseException) -> None:
        ack = self._ack
        if ack is not None and not ack.done():
            overflow = isinstance(error, ClientError) and error.code == CLIENT_OVERFLOW
            if overflow:  # entering succeeds; iterating yields what was buffered, then raises
                ack.set_result(None)
            else:
                ack.set_exception(error)
        if self._error is None:
            self._error = error
        self._client._streams.pop(self.request_id, None)
        if isinstance(error, ClientError) and error.code == CLIENT_OVERFLOW:
            self._client._unsub_soon(self)
        self._wakeup.set()


class Client:
    """An asyncio xraptor client over one WebSocket connection.

    :param url: the server's ``ws://`` or ``wss://`` URL
    :param timeout: seconds to wait for a reply before raising :class:`TimeoutError`
    :param raise_errors: raise :class:`ClientError` for error responses (default);
        ``False`` returns them like any other response
    :param max_queue: unread messages buffered per stream; a stream whose consumer
        falls further behind ends with :class:`ClientError` code ``client_overflow``
    :param token: a bearer token, sent as ``Authorization: Bearer <token>`` on the
        handshake for the server's connect guards (``handshake.token``)
    :param headers: extra HTTP headers for the handshake (``{"X-Api-Key": ...}``)
    :param connect_options: passed to :func:`websockets.asyncio.client.connect`

    A server that refuses the handshake (an Origin it does not allow, a guard's
    ``Refuse``) makes :meth:`connect` raise websockets'
    :class:`~websockets.exceptions.InvalidStatus`: ``error.response.status_code``
    is the HTTP status (401, 403 ...), ``error.response.body`` the reason.
    websockets' DEBUG log of the handshake has the token and credentials redacted.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        *,
        raise_errors: bool = True,
        max_queue: int = 1024,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        **connect_options: Any,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_queue <= 0:
            raise ValueError(f"max_queue must be positive, got {max_queue!r}")
        connect_options["additional_headers"] = handshake_headers(
            token, headers, connect_options.get("additional_headers")
        )
        connect_options.setdefault("logger", redacting_logger("websockets.client"))
        self.url = url
        self.timeout = timeout
        self.raise_errors = raise_errors
        self.max_queue = max_queue
        self._connect_options = connect_options
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._streams: dict[str, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_error: BaseException | None = None

    # ----- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> Self:
        """Open the connection (``async with`` does it for you)."""
        if self._ws is not None:
            raise RuntimeError("the client is already connected")
        async with asyncio.timeout(self.timeout):
            self._ws = await connect(self.url, **self._connect_options)
        self._closed_error = None
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))
        return self

    async def close(self) -> None:
        """Close the connection; pending requests and open streams end."""
        ws, self._ws = self._ws, None
        if ws is None:
            return
        await ws.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
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
        return self._ws is None or self._closed_error is not None

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

        :raises ClientError: the reply is an error response (unless ``raise_errors=False``)
        :raises TimeoutError: no reply within ``timeout`` (default: the client's)
        :raises websockets.exceptions.ConnectionClosed: the connection closed first
        """
        method = MethodType(method.upper()) if isinstance(method, str) else method
        if method in (MethodType.SUB, MethodType.UNSUB):
            raise ValueError("use client.subscribe() for SUB and UNSUB")
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(request_id, route, method, _encode_payload(payload), header or {})
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                response = await future
        finally:
            self._pending.pop(request_id, None)
        if self.raise_errors and _is_error(response):
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
        self, route: str, payload: Payload = "", header: dict[str, Any] | None = None
    ) -> Stream:
        """A stream: ``async with`` sends SUB, iterating yields its messages, exit sends UNSUB.

        The SUB asks for an acknowledgment (header ``{"ack": true}``): entering returns
        once the server has registered the stream, run its handler and subscribed the
        rooms it joined, and raises :class:`ClientError` when the server refused it.
        """
        return Stream(self, route, _encode_payload(payload), header or {}, self.max_queue)

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
        await ws.send(frame, text=True)

    async def _read(self, ws: ClientConnection) -> None:
        error: BaseException
        try:
            while True:
                raw = await ws.recv(decode=False)
                response = _parse_response(raw)
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
        if _is_error(response) and not request_id:
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
