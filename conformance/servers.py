"""The two servers under test, each run in its own process by the conformance runner.

``python -m conformance.servers xraptor|echo`` binds a free port on 127.0.0.1, prints
``PORT <n>`` on stdout and serves until stdin is closed (the runner closes it, and so
does the runner's death) or SIGTERM/SIGINT arrives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import xraptor

HOST = "127.0.0.1"


@asynccontextmanager
async def xraptor_server() -> AsyncIterator[int]:
    """xraptor with its defaults: memory antenna, no routes, default limits; on the
    transport ``XRAPTOR_TRANSPORT`` names (as for ``xraptor run``; default websockets)."""
    app = xraptor.XRaptor(HOST, 0, transport=os.environ.get("XRAPTOR_TRANSPORT") or "websockets")
    await app.start()
    try:
        yield app.port
    finally:
        await app.close()


async def _echo(connection: ServerConnection) -> None:
    try:
        async for message in connection:
            await connection.send(message)
    except ConnectionClosed:
        pass  # a failed connection (1002, 1007 ...) is what the suite provokes


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """websockets' own server with its defaults, echoing every message back."""
    async with serve(_echo, HOST, 0) as server:
        yield server.sockets[0].getsockname()[1]


SERVERS: dict[str, Callable[[], AbstractAsyncContextManager[int]]] = {
    "xraptor": xraptor_server,
    "echo": echo_server,
}


async def _serve(name: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def read_until_eof() -> None:
        while os.read(sys.stdin.fileno(), 4096):
            pass
        loop.call_soon_threadsafe(stop.set)  # EOF: the runner is done (or gone)

    threading.Thread(target=read_until_eof, daemon=True).start()
    async with SERVERS[name]() as port:
        print(f"PORT {port}", flush=True)
        await stop.wait()


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in SERVERS:
        sys.exit(f"usage: python -m conformance.servers {{{'|'.join(SERVERS)}}}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve(sys.argv[1]))


if __name__ == "__main__":
    main()
