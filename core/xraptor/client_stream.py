"""A client's SUB stream and the client's errors (see :mod:`xraptor.client`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import orjson
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from .protocol import ACK, MethodType, Response

if TYPE_CHECKING:
    from .client import Client

#: the code of the ClientError that ends a stream whose consumer fell behind
CLIENT_OVERFLOW = "client_overflow"

#: header keys of rooms with history (see the README's "Delivery guarantees")
SINCE, ROOM, POSITION = "since", "room", "position"

#: the gap notice a reconnecting client gives a stream it re-opens with no position to
#: resume from: what was published while it was disconnected is lost
_RECONNECT_GAP_PAYLOAD = (
    '{"code": "gap", "message": "the connection to the server dropped and the stream '
    'had no position to resume from; messages published meanwhile may have been missed"}'
)


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


def _check_since(since: Mapping[str, str] | None) -> dict[str, str] | None:
    if since is None:
        return None
    if not isinstance(since, Mapping):
        raise TypeError(f"since must be a mapping of room ids to positions, got {since!r:.80}")
    for room, position in since.items():
        if not isinstance(room, str) or not isinstance(position, str):
            raise TypeError(
                'since maps room ids (str) to positions ("<epoch>:<offset>" str), '
                f"got {room!r:.64}: {position!r:.64}"
            )
    return dict(since)


def is_error(response: Response) -> bool:
    return "error" in response.header


def parse_response(raw: str | bytes) -> Response | None:
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
    the SUB handler's own reply when it sends one, gap notices (header
    ``{"notice": "gap"}``: the backend reconnected and messages may be missing) and
    unrecovered notices (header ``{"notice": "unrecovered", "room": ...}``: a room's
    history no longer reached back to ``since``).
    An error response ends the stream by raising :class:`ClientError`.

    A reconnecting client re-opens the stream on its new connection: a new
    :attr:`request_id`, ``since`` the last position received per room; the iteration
    goes on with what the rooms recovered (or their ``unrecovered`` notices). A stream
    with no position at all to resume from gets a gap notice instead.

    :ivar positions: the position of the last push iterated over, per room with
        history (``{"<room id>": "<epoch>:<offset>"}``), starting from ``since``:
        what a later ``client.subscribe(..., since=stream.positions)`` resumes from
    :ivar request_id: the SUB's id (a new one each time a reconnecting client
        re-opens the stream)
    """

    def __init__(
        self,
        client: Client,
        route: str,
        payload: str,
        header: dict[str, Any],
        max_queue: int,
        *,
        since: Mapping[str, str] | None = None,
    ) -> None:
        self._client = client
        self.route = route
        self.payload = payload
        self.header = header
        self._since = _check_since(since)
        self.positions: dict[str, str] = dict(self._since or {})
        #: the last position received (queued, maybe not iterated yet) per room
        self._received: dict[str, str] = dict(self._since or {})
        self.request_id = uuid.uuid4().hex
        self._queue: deque[Response] = deque()
        self._max_queue = max_queue
        self._wakeup = asyncio.Event()
        self._error: BaseException | None = None
        self._open = False
        self._ack: asyncio.Future[None] | None = None
        #: a reconnecting client is re-opening the stream (its SUB is unacknowledged)
        self._resubscribing = False
        #: a gap notice was queued since the stream was last re-opened
        self._told_gap = False

    async def __aenter__(self) -> Self:
        client = self._client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + client.timeout
        await client._until_open(deadline)  # a reconnecting client may be reconnecting
        client._streams[self.request_id] = self
        self._open = True
        self._ack = loop.create_future()
        try:
            # the server answers {"ack": true} once the stream is registered, its handler
            # returned and the rooms it joined are subscribed; a refusal is an error frame
            header = {**self.header, ACK: True}
            if self._since:
                header[SINCE] = self._since
            await client._send(self.request_id, self.route, MethodType.SUB, self.payload, header)
            async with asyncio.timeout_at(deadline):
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
        if self._ack is not None and not self._ack.done():
            self._ack.cancel()  # a re-opening: the client stops waiting for it
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
                header = response.header
                if is_error(response):
                    error = ClientError.from_response(response)
                    self._end(error)
                    raise error
                position = header.get(POSITION)
                if position is not None:
                    room = header.get(ROOM)
                    if isinstance(room, str) and isinstance(position, str):
                        self.positions[room] = position
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
        header = response.header
        if ack is not None and not ack.done():
            if is_error(response):
                ack.set_exception(ClientError.from_response(response))
                return
            if header.get(ACK) is True:
                ack.set_result(None)
                return
        if len(self._queue) < self._max_queue:
            self._queue.append(response)
            position = header.get(POSITION)
            if position is not None:
                room = header.get(ROOM)
                if isinstance(room, str) and isinstance(position, str):
                    self._received[room] = position
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

    # ----- called by a reconnecting client ----------------------------------------------

    def _dropped(self, lost: BaseException) -> None:
        """The connection dropped: a SUB being entered fails; a re-opening is retried."""
        ack = self._ack
        if ack is None or ack.done():
            return  # open: the client re-opens it on the next connection
        if not self._resubscribing:
            self._end(lost)  # being entered: the SUB was a request in flight
            return
        ack.set_exception(lost)
        ack.exception()  # retrieved: the client reads it, or re-opens the stream anyway

    async def _resubscribe(self) -> asyncio.Future[None]:
        """Send the SUB again with a new id and ``since`` the positions received; the
        future is its acknowledgment."""
        client = self._client
        client._streams.pop(self.request_id, None)
        self.request_id = uuid.uuid4().hex
        client._streams[self.request_id] = self
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack = ack
        self._resubscribing = True
        header = {**self.header, ACK: True}
        if self._received:
            header[SINCE] = dict(self._received)
        elif not self._told_gap:
            self._told_gap = True
            self._queue.append(
                Response(self.request_id, _RECONNECT_GAP_PAYLOAD, {"notice": "gap"}, MethodType.SUB)
            )
            self._wakeup.set()
        await client._send(self.request_id, self.route, MethodType.SUB, self.payload, header)
        return ack

    def _resubscribed(self) -> None:
        self._resubscribing = False
        self._told_gap = False
