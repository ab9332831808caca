"""Request dispatch: one request's middlewares, handler and answer, and streams.

:class:`Dispatch` serves a parsed request; :class:`~xraptor.reader.Reader` reads a
connection's messages and hands them to it; the server half (configuration,
lifecycle, HTTP endpoints) lives in :mod:`xraptor.server`.
"""

from __future__ import annotations

import logging

import orjson

from .antenna import AntennaError, AntennaUnavailable, MessageTooLarge
from .app import App
from .connection import Connection, Stream
from .middleware import MiddlewareChain
from .presence import client_info
from .protocol import (
    ACK,
    ErrorCode,
    MethodType,
    Request,
    RequestError,
    Response,
    ack_frame,
)
from .recovery import recover, since_of
from .routing import Handler, Router
from .sampling import LogSampler

logger = logging.getLogger("xraptor")

_UNSUB_ACK = orjson.dumps({"message": "unsubscribed"}).decode()


def shutting_down(request: Request) -> RequestError:
    return RequestError.about(
        request,
        ErrorCode.SHUTTING_DOWN,
        "the server is shutting down; reconnect and send the request again",
    )


#: seconds between two INFO log lines about refused requests of one connection
REFUSAL_LOG_INTERVAL = 5.0


class Dispatch(App):
    """Serves one request: middlewares, route, handler, answer; SUB and UNSUB streams.

    :class:`~xraptor.reader.Reader` decides when (GET, POST and PUT of a connection
    concurrently; SUB and UNSUB before its next message is read).
    """

    #: the middlewares this app runs (``None`` when there are none: one test per request)
    _chain: MiddlewareChain | None
    _router: Router
    _max_buffer: int
    _max_streams: int
    _max_inflight: int
    _max_id_length: int
    _draining: bool
    _connections: set[Connection]

    async def _release(self, connection: Connection) -> None:
        for stream in tuple(connection.streams.values()):
            await self._end_stream(stream)

    @property
    def draining(self) -> bool:
        """Whether a shutdown is under way (new work is refused)."""
        return self._draining

    def _refusal_of(self, request: Request) -> RequestError:
        """Why a parsed request is refused: an id over ``max_id_length``, or the drain."""
        limit = self._max_id_length
        if len(request.request_id) > limit or len(request.route) > limit:
            long_id = len(request.request_id) > limit
            return RequestError(
                ErrorCode.INVALID_FIELD,
                f"field {'request_id' if long_id else 'route'!r} is longer than the "
                f"server's limit of {limit} characters",
                "" if long_id else request.request_id,
                request.method.value,
            )
        return shutting_down(request)

    async def _serve(self, connection: Connection, request: Request) -> None:
        """Run the middlewares and the handler of one request and write its answer."""
        try:
            chain = self._chain
            if chain is not None:
                try:
                    answer = await chain.run(request, connection)
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
            if self.room_tasks.pending:
                await self.room_tasks.settle()
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

    async def _refuse(
        self, connection: Connection, error: RequestError, data: bytes | str = b""
    ) -> None:
        self._log_refusal(connection, error, data)
        await connection.send(error.frame())

    def _log_refusal(self, connection: Connection, error: RequestError, data: bytes | str) -> None:
        """Count every refusal; log it at DEBUG, and one sample per connection at INFO at
        most every ``REFUSAL_LOG_INTERVAL`` seconds (see :mod:`xraptor.sampling`)."""
        self.metrics.request_errors_total += 1
        sampler = connection.refusal_log
        if sampler is None:
            sampler = connection.refusal_log = LogSampler(REFUSAL_LOG_INTERVAL)
        sampled = sampler.log(
            logger,
            "refused request from %s (%s): %.200s; %s",
            connection.remote_ip,
            error.code,
            error.message,
            f"starts with {data[:48]!r}" if data else f"request_id {error.request_id[:64]!r}",
        )
        if not sampled:
            self.metrics.refusal_logs_suppressed_total += 1

    # ----- streams ------------------------------------------------------------------

    async def _subscribe(self, connection: Connection, request: Request) -> None:
        handler = self._handler_for(request)
        request_id = request.request_id
        if not request_id:
            raise RequestError.about(
                request, ErrorCode.INVALID_FIELD, "a SUB needs a non-empty request_id"
            )
        if request_id in self.streams:
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
        since = since_of(request) if request.header else None
        shared = client_info(request) if request.header else None
        stream = Stream(connection, request_id, self.antenna)
        stream.since = since
        stream.presence = shared
        self.streams[request_id] = stream
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
            if self.room_tasks.pending:
                await self.room_tasks.settle()
            for room in stream.rooms:
                if room.failure is not None:
                    raise AntennaUnavailable(
                        f"room {room.broadcast_id[:64]!r} could not subscribe: {room.failure}"
                    )
        except BaseException:
            await self._end_stream(stream)
            raise
        # a handler that answers with an error (or not with a Response) refused the SUB:
        # the client holds no stream, so neither does the server, and there is no ack
        refused = result is not None and (
            not isinstance(result, Response) or "error" in result.header
        )
        if refused:
            await self._end_stream(stream)
        elif since is not None:
            try:
                await recover(stream, antenna)
            except BaseException:
                await self._end_stream(stream)
                raise
        await self._answer(connection, request, result)
        if not refused and request.header.get(ACK) is True:
            await connection.send(ack_frame(request_id))

    async def _unsubscribe(self, connection: Connection, request: Request) -> None:
        request_id = request.request_id
        stream = connection.streams.get(request_id)
        methods = self._router.table.get(request.route)
        if methods is None:
            self._handler_for(request)  # raises unknown_route
        if stream is None:
            if request_id in self.streams:
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
        if self.streams.get(request_id) is stream:
            del self.streams[request_id]
        self.metrics.streams_active -= 1
        for room in tuple(stream.rooms):
            room.remove_member(request_id)
        try:
            await self.antenna.unlisten(request_id, stream)
        except Exception:
            logger.exception("could not unsubscribe stream %.64r", request_id)
