"""Request dispatch: one connection's messages, handlers, middlewares and streams.

:class:`Dispatch` is the half of :class:`~xraptor.server.XRaptor` that runs per
connection and per request; the server half (configuration, lifecycle, HTTP
endpoints) lives in :mod:`xraptor.server`.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .antenna import Antenna, AntennaError, AntennaUnavailable, MessageTooLarge
from .broadcast import Broadcast
from .connection import LOCAL_STREAMS, Connection, Stream
from .metrics import Metrics
from .middleware import MiddlewareChain
from .protocol import (
    ErrorCode,
    MethodType,
    Request,
    RequestError,
    Response,
    parse_request,
)
from .routing import Handler, Router

logger = logging.getLogger("xraptor")

_UNSUB_ACK = orjson.dumps({"message": "unsubscribed"}).decode()


class Dispatch:
    """Serves one connection at a time: parse, middleware, route, answer, streams."""

    _middlewares: ClassVar[MiddlewareChain]
    metrics: Metrics
    _router: Router
    _max_buffer: int
    _max_streams: int

    @property
    def antenna(self) -> Antenna:
        raise NotImplementedError

    # ----- connections --------------------------------------------------------------

    async def _handle_connection(self, ws: ServerConnection) -> None:
        connection = Connection(ws, self._max_buffer, self.metrics)
        self.metrics.connections_total += 1
        self.metrics.connections_active += 1
        try:
            while True:
                data = await ws.recv(decode=False)
                await self._handle_message(connection, data)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection %s failed", connection.connection_id)
        finally:
            self.metrics.connections_active -= 1
            await self._release(connection)

    async def _release(self, connection: Connection) -> None:
        for stream in tuple(connection.streams.values()):
            await self._end_stream(stream)

    async def _handle_message(self, connection: Connection, data: bytes) -> None:
        self.metrics.requests_total += 1
        try:
            request = parse_request(data)
        except RequestError as error:
            await self._refuse(connection, error, data)
            return
        request.connection = connection
        try:
            if self._middlewares:
                try:
                    answer = await self._middlewares.run(request, connection)
                except Exception as error:
                    logger.exception("middleware failed on route %.64r", request.route)
                    raise RequestError.about(
                        request,
                        ErrorCode.MIDDLEWARE_ERROR,
                        f"a middleware failed: {type(error).__name__}",
                    ) from None
                if answer is not None:
                    await connection.send(answer.encode(request.method))
                    return
            method = request.method
            if method is MethodType.SUB:
                await self._subscribe(connection, request)
                return
            if method is MethodType.UNSUB:
                await self._unsubscribe(connection, request)
                return
            methods = self._router.table.get(request.route)
            handler = methods.get(method) if methods is not None else None
            if handler is None:
                handler = self._handler_for(request)  # raises the right error
            result = await handler(request)
            if Broadcast._pending:
                await Broadcast.settle()
            if result is None:
                return
            if type(result) is Response:
                frame = result.encode(method)
                if not connection.write(frame):
                    await connection.send(frame)
                return
            await self._answer(connection, request, result)
        except RequestError as error:
            await self._refuse(connection, error)
        except MessageTooLarge as error:
            await self._refuse(
                connection,
                RequestError.about(
                    request,
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"the pub/sub backend refused the message: {error}",
                ),
            )
        except AntennaUnavailable as error:
            await self._refuse(
                connection,
                RequestError.about(
                    request,
                    ErrorCode.BACKEND_UNAVAILABLE,
                    f"the pub/sub backend is unavailable: {error}",
                ),
            )
        except Exception:
            logger.exception("handler of %s %.64r failed", request.method.value, request.route)
            await self._refuse(
                connection,
                RequestError.about(
                    request, ErrorCode.HANDLER_ERROR, "the handler failed; see the server log"
                ),
            )

    def _handler_for(self, request: Request) -> Handler:
        methods = self._router.table.get(request.route)
        handler = methods.get(request.method) if methods is not None else None
        if handler is not None:
            return handler
        if methods is None:
            raise RequestError.about(
                request, ErrorCode.UNKNOWN_ROUTE, f"route {request.route[:64]!r} is not registered"
            )
        raise RequestError.about(
            request,
            ErrorCode.METHOD_NOT_ALLOWED,
            f"route {request.route[:64]!r} does not accept {request.method.value}; "
            f"it accepts {', '.join(sorted(m.value for m in methods))}",
        )

    async def _answer(self, connection: Connection, request: Request, result: object) -> None:
        if result is None:
            return
        if not isinstance(result, Response):
            logger.error(
                "handler of %.64r returned %s, not a Response", request.route, type(result).__name__
            )
            raise RequestError.about(
                request,
                ErrorCode.INVALID_RESPONSE,
                "the handler returned something other than a Response",
            )
        await connection.send(result.encode(request.method))

    async def _refuse(self, connection: Connection, error: RequestError, data: bytes = b"") -> None:
        self.metrics.request_errors_total += 1
        if data:
            logger.info(
                "refused request (%s): %s; starts with %.48r", error.code, error.message, data[:48]
            )
        else:
            logger.info(
                "refused request %.64r (%s): %s", error.request_id, error.code, error.message
            )
        await connection.send(error.frame())

    # ----- streams ------------------------------------------------------------------

    async def _subscribe(self, connection: Connection, request: Request) -> None:
        handler = self._handler_for(request)
        request_id = request.request_id
        if not request_id:
            raise RequestError.about(
                request, ErrorCode.INVALID_FIELD, "a SUB needs a non-empty request_id"
            )
        if request_id in LOCAL_STREAMS:
            raise RequestError.about(
                request,
                ErrorCode.STREAM_IN_USE,
                "a stream with this request_id is already open; use a new request_id",
            )
        if len(connection.streams) >= self._max_streams:
            raise RequestError.about(
                request,
                ErrorCode.TOO_MANY_STREAMS,
                f"this connection already has {len(connection.streams)} open streams, the "
                "server's limit; UNSUB one first",
            )
        stream = Stream(connection, request_id)
        LOCAL_STREAMS[request_id] = stream
        connection.streams[request_id] = stream
        self.metrics.streams_active += 1
        antenna = self.antenna
        try:
            if not antenna.is_listening(request_id) and await antenna.is_alive(request_id):
                raise RequestError.about(
                    request,
                    ErrorCode.STREAM_IN_USE,
                    "a stream with this request_id is open in another process; "
                    "use a new request_id",
                )
            await antenna.listen(request_id, stream)
        except AntennaError as error:
            await self._end_stream(stream)
            raise AntennaUnavailable(str(error)) from error
        except BaseException:
            await self._end_stream(stream)
            raise
        try:
            result = await handler(request)
            if Broadcast._pending:
                await Broadcast.settle()
        except BaseException:
            await self._end_stream(stream)
            raise
        await self._answer(connection, request, result)

    async def _unsubscribe(self, connection: Connection, request: Request) -> None:
        request_id = request.request_id
        stream = connection.streams.get(request_id)
        methods = self._router.table.get(request.route)
        if methods is None:
            self._handler_for(request)  # raises unknown_route
        if stream is None:
            if request_id in LOCAL_STREAMS:
                raise RequestError.about(
                    request,
                    ErrorCode.NOT_STREAM_OWNER,
                    "this request_id is a stream of another connection",
                )
            raise RequestError.about(
                request,
                ErrorCode.UNKNOWN_STREAM,
                "no open stream has this request_id on this connection",
            )
        handler = methods.get(MethodType.UNSUB) if methods is not None else None
        try:
            result: object = await handler(request) if handler is not None else None
        finally:
            await self._end_stream(stream)
        if handler is None:
            result = Response(request_id, _UNSUB_ACK, {}, MethodType.UNSUB)
        await self._answer(connection, request, result)

    async def _end_stream(self, stream: Stream) -> None:
        request_id = stream.request_id
        connection = stream.connection
        if connection.streams.pop(request_id, None) is None:
            return
        if LOCAL_STREAMS.get(request_id) is stream:
            del LOCAL_STREAMS[request_id]
        self.metrics.streams_active -= 1
        for room in tuple(stream.rooms):
            room.remove_member(request_id)
        try:
            await self.antenna.unlisten(request_id, stream)
        except Exception:
            logger.exception("could not unsubscribe stream %.64r", request_id)
