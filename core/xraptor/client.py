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
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .client_stream import ClientError, Stream, is_error, parse_response
from .handshake import handshake_headers
from .protocol import MethodType, Response
from .redaction import redacting_logger

logger = logging.getLogger("xraptor.client")

__all__ = ["Client", "ClientError", "Stream"]

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
        self._ws: ClientWebSocket | None = None
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
            self._ws = await self._open_websocket()
        self._closed_error = None
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))
        return self

    async def _open_websocket(self) -> ClientWebSocket:
        """Open the WebSocket (the seam :class:`xraptor.testing.TestClient` replaces)."""
        return await connect(self.url, **self._connect_options)

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

        :param since: positions to recover from, per room with history
            (``{"<room id>": "<epoch>:<offset>"}``, e.g. an earlier stream's
            :attr:`~xraptor.client.Stream.positions`): the stream first receives what
            each room published after its position, or an ``unrecovered`` notice
        :raises TypeError: ``since`` is not a mapping of str to str
        """
        return Stream(
            self, route, _encode_payload(payload), header or {}, self.max_queue, since=since
        )

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
