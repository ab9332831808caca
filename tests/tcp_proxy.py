"""A TCP proxy for fault tests: forwards bytes both ways, and drops connections on demand.

::

    async with TcpProxy(("127.0.0.1", server_port)) as proxy:
        client = Client(f"ws://127.0.0.1:{proxy.port}", reconnect=True)
        ...
        proxy.drop()                         # both sides of every connection, now
        proxy.refuse = True                  # new connections are closed at once
        proxy.target = ("127.0.0.1", other)  # new connections go to another server

Written here rather than taken from a library: it is forty lines of asyncio streams,
and the tests need exactly these three knobs.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class TcpProxy:
    """Listens on a free loopback port and forwards each connection to :attr:`target`.

    :ivar target: ``(host, port)`` that new connections are forwarded to
    :ivar refuse: when true, new connections are accepted and closed at once
    :ivar accepted: how many connections were accepted (refused ones too)
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.refuse = False
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._half_closed: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def drop(self) -> int:
        """Abort both sides of every open connection (no closing handshake, no FIN
        exchange: the peers see a reset); returns how many were dropped."""
        pairs = tuple(self._pairs)
        self._pairs.clear()
        for client, upstream in pairs:
            client.transport.abort()
            upstream.transport.abort()
        return len(pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        loop = asyncio.get_running_loop()
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = loop.create_task(self._pipe(source, sink, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
            if pair in self._pairs and pair not in self._half_closed and sink.can_write_eof():
                sink.write_eof()  # an orderly end: pass it on, the other way may go on
                self._half_closed.add(pair)
                return
        except OSError:
            pass
        self._half_closed.discard(pair)
        # a reset, or one side dropped: end both
        self._pairs.discard(pair)
        for writer in pair:
            writer.transport.abort()
