"""Reading a connection: its messages, in order, served concurrently where they may be.

:class:`Reader` is the part of :class:`~xraptor.server.XRaptor` that runs for each
connection: it reads messages, refuses bad ones, serves SUB and UNSUB before it
reads on, and GET, POST and PUT concurrently (see :meth:`Reader._read_loop`).
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Coroutine, Generator
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from .connection import Closed, Connection
from .context import serving
from .dispatch import Dispatch, shutting_down
from .protocol import ErrorCode, MethodType, Request, RequestError, parse_request

logger = logging.getLogger("xraptor")

#: served before the connection's next message is read (their order matters)
_SUB, _UNSUB = MethodType.SUB, MethodType.UNSUB

#: what a transport's receive() raises once the connection ended
_CLOSED = (ConnectionClosed, Closed)


class Reader(Dispatch):
    """Reads connections and hands their requests to :class:`Dispatch`."""

    # ----- connections --------------------------------------------------------------

    def _open(self, connection: Connection) -> Coroutine[Any, Any, None]:
        """A transport accepted ``connection``: count it, and return what reads it
        (run by the transport in its own task for the connection, so an idle
        connection costs one task)."""
        serving(self)  # class-level calls in this connection's handlers mean this app
        self.metrics.connections_total += 1
        self.metrics.connections_active += 1
        self._connections.add(connection)
        return self._read_loop(connection, owner=True)

    async def _end(self, connection: Connection, me: asyncio.Task[Any] | None) -> None:
        """The owner's last step: once the connection closed, cancel what is left and
        release its streams."""
        try:
            if connection.reader is not me:  # handed over: the reading went on elsewhere
                await connection.wait_closed()
        finally:
            self._connections.discard(connection)
            self.metrics.connections_active -= 1
            await connection.cancel_tasks(me)
            await self._release(connection)

    async def _read_loop(self, connection: Connection, *, owner: bool = False) -> None:
        """Read and serve the connection's messages, one reader task at a time.

        GET, POST and PUT run in the reader itself: the reader takes the request's
        first step (``send(None)``), so a handler that returns without waiting costs
        no task and schedules nothing. If it waits (a database, the backend...), a new
        reader task reads on and this one finishes the request (its handler stays in
        one task throughout, so ``asyncio.timeout()`` and ``current_task()`` in it
        mean that request), then ends. At most ``max_inflight`` requests are in
        flight; past it the reader waits for one to finish before it reads on
        (backpressure). SUB and UNSUB never hand over: the next message is read only
        once they were served.

        The first reader, websockets' task for the connection (the ``owner``), also
        ends the connection (:meth:`_end`). When the connection is lost, the tasks of
        requests in flight are cancelled, and so is the reader if it is serving a SUB
        or waiting for room rather than for the next message.
        """
        me = asyncio.current_task()
        if owner:
            connection.reader = me
        max_inflight = self._max_inflight
        limit = self._max_id_length
        metrics = self.metrics
        # the transport's received messages, read only to tell whether another is
        # already waiting (then the loop yields, so one connection's burst cannot
        # starve the others: receive() returns without suspending while it has one)
        backlog = connection.frames
        # what the last message left is dropped before waiting for the next one, so an
        # idle connection holds no request, no finished coroutine, no message bytes
        data: bytes | str | None
        request: Request | None
        serving: Coroutine[Any, Any, None] | None
        try:
            while True:
                data = request = serving = None
                data = await connection.receive()
                metrics.requests_total += 1
                try:
                    request = parse_request(data)
                    if (
                        len(request.request_id) > limit
                        or len(request.route) > limit
                        or self._draining
                    ):
                        raise self._refusal_of(request)
                except RequestError as error:
                    if backlog.text and error.code == ErrorCode.INVALID_JSON and _bad_utf8(data):
                        # RFC 6455: a text message must be UTF-8; close with 1007
                        await connection.close(
                            CloseCode.INVALID_DATA, "invalid UTF-8 in a text message"
                        )
                        continue
                    await self._refuse(connection, error, data)
                else:
                    request.connection = connection
                    method = request.method
                    if method is _SUB or method is _UNSUB or max_inflight == 1:
                        connection.serving_inline = True
                        try:
                            await self._serve(connection, request)
                        finally:
                            connection.serving_inline = False
                    else:
                        if len(connection.tasks) >= max_inflight:
                            await connection.wait_for_room(max_inflight)
                            if self.draining:  # it was read before the drain began
                                await self._refuse(connection, shutting_down(request), data)
                                continue
                        serving = self._serve(connection, request)
                        waiting_for = _first_step(serving)
                        if waiting_for is not _DONE:  # else it was served without waiting
                            assert me is not None
                            connection.hand_over(self._read_loop(connection))
                            try:
                                await _finish(serving, waiting_for)
                            finally:
                                connection.request_done(me)
                            break  # another task reads now
                if backlog:
                    await asyncio.sleep(0)
        except _CLOSED:
            pass
        except asyncio.CancelledError:
            if not (owner and connection.cancelled_reader and me is not None):
                raise
            me.uncancel()  # cancelled by connection.lost(): the connection ended
        except Exception:
            logger.exception("connection %s failed", connection.connection_id)
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if owner:
                await self._end(connection, me)


#: what :func:`_first_step` returns for a coroutine that finished
_DONE: Any = object()


def _first_step(coro: Coroutine[Any, Any, None]) -> Any:
    """Run ``coro`` to its first wait: what it yielded, or :data:`_DONE` if it finished.

    Its StopIteration is caught here rather than in the reader, so that it never passes
    through the reader's frame: an exception materializes a frame object (about 300
    bytes) for each frame it passes through, which a coroutine's frame keeps for as long
    as the coroutine lives (for the reader: the connection's life).
    """
    try:
        return coro.send(None)
    except StopIteration:
        return _DONE


@types.coroutine
def _finish(coro: Coroutine[Any, Any, None], waiting_for: Any) -> Generator[Any, Any, None]:
    """Await the rest of ``coro``, whose first step yielded ``waiting_for``.

    Passes what the coroutine yields up to the task (a future to wait for, or
    ``None``: a bare yield) and what the task sends or throws (a cancellation) down.
    """
    while True:
        try:
            sent = yield waiting_for
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as error:
            try:
                waiting_for = coro.throw(error)
            except StopIteration:
                return
        else:
            try:
                waiting_for = coro.send(sent)
            except StopIteration:
                return


def _bad_utf8(data: bytes | str) -> bool:
    if isinstance(data, str):
        return False
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False
