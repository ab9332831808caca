"""The servers under test, one per process: ``python bench/servers.py SYSTEM ...``.

* ``raw``: plain ``websockets`` (new asyncio API), the baseline. By path:
  ``/echo`` echoes; ``/member`` joins the room; ``/pub`` publishes to the room
  (``websockets.broadcast()`` directly, or through one Redis / NATS subscription
  that broadcasts what it receives); ``/sub`` holds one subscription per connection.
* ``xraptor``: this repository's xraptor through its public API: ``GET /echo``,
  ``GET /slow`` (awaits 5 ms, then echoes), ``SUB /stream`` and the chat routes of
  :mod:`xraptor.demo`.
* ``xraptor-asgi``: the same app through ``server.asgi_app()`` (ASGI 3), served by
  uvicorn on this process's event loop, lifespan on, WebSocket implementation
  ``--ws`` (default ``websockets-sansio``).
* ``xraptor-picows``: the same app on the picows transport (``transport="picows"``,
  the xraptor-picows plugin).
* ``sio``: python-socketio's ``AsyncServer(async_mode="asgi")`` in ``socketio.ASGIApp``,
  served by uvicorn on this process's event loop (the same ``--loop`` as the others):
  events ``fast`` (acknowledged with its data) and ``slow`` (awaits 5 ms first); ``join``
  enters the fan-out room (acknowledged), ``pub`` emits its data to the room as ``msg``.
  With ``--antenna redis`` the rooms go through ``AsyncRedisManager`` (as a deployment
  of several processes would); python-socketio has no NATS manager.
* ``broadcaster``: encode/broadcaster on Starlette, served by uvicorn, with the raw
  baseline's paths: ``/echo``; ``/member`` subscribes to the room and forwards what it
  receives; ``/pub`` publishes. Backend ``memory://`` or the Redis URL (no NATS backend).

The 0.4.1, socket.io and broadcaster servers run in virtualenvs of their own (run.py
makes them): this file imports their packages only inside their functions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import pstats
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from common import DEFAULT_ASGI_WS, ROOM, SLOW_SECONDS, raise_nofile, run_loop

if TYPE_CHECKING:
    from xraptor import XRaptor


class RawBackend:
    """The raw baseline's pub/sub: in process, or one Redis / NATS client, or two asyncpg
    connections (LISTEN on one, ``pg_notify`` on the other, one round trip per message)."""

    def __init__(self, kind: str, url: str, deliver: Callable[[str], None]) -> None:
        self.kind = kind
        self.url = url
        self.deliver = deliver
        self._redis: Any = None
        self._pubsub: Any = None
        self._nats: Any = None
        self._pg_listen: Any = None
        self._pg_notify: Any = None
        self._subs: dict[str, Any] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.kind == "redis":
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(self.url, decode_responses=True)
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.subscribe(ROOM)
            self._reader = asyncio.get_running_loop().create_task(self._read_redis())
        elif self.kind == "nats":
            import nats

            self._nats = await nats.connect(self.url)

            async def on_msg(msg: Any) -> None:
                self.deliver(msg.data.decode())

            await self._nats.subscribe(ROOM, cb=on_msg)
        elif self.kind == "postgres":
            import asyncpg

            self._pg_listen = await asyncpg.connect(self.url)
            self._pg_notify = await asyncpg.connect(self.url)

            def on_notify(connection: Any, pid: int, channel: str, payload: Any) -> None:
                self.deliver(payload)

            await self._pg_listen.add_listener(ROOM, on_notify)

    async def _read_redis(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] == "message" and message["channel"] == ROOM:
                self.deliver(message["data"])

    async def publish(self, message: str) -> None:
        if self.kind == "redis":
            await self._redis.publish(ROOM, message)
        elif self.kind == "nats":
            await self._nats.publish(ROOM, message.encode())
        elif self.kind == "postgres":
            await self._pg_notify.execute("SELECT pg_notify($1, $2)", ROOM, message)
        else:
            self.deliver(message)

    async def subscribe(self, channel: str) -> None:
        if self.kind == "redis":
            await self._pubsub.subscribe(channel)
        elif self.kind == "nats":

            async def ignore(msg: Any) -> None:
                return None

            self._subs[channel] = await self._nats.subscribe(channel, cb=ignore)
        elif self.kind == "postgres":

            def ignored(connection: Any, pid: int, name: str, payload: Any) -> None:
                return None

            self._subs[channel] = ignored
            await self._pg_listen.add_listener(channel, ignored)
        else:
            self._subs[channel] = True

    async def unsubscribe(self, channel: str) -> None:
        sub = self._subs.pop(channel, None)
        if self.kind == "redis":
            await self._pubsub.unsubscribe(channel)
        elif self.kind == "nats" and sub is not None:
            await sub.unsubscribe()
        elif self.kind == "postgres" and sub is not None:
            await self._pg_listen.remove_listener(channel, sub)


async def raw_main(port: int, antenna: str, url: str, stop: asyncio.Event) -> None:
    import websockets
    from websockets.asyncio.server import ServerConnection, serve

    members: set[ServerConnection] = set()

    def deliver(message: str) -> None:
        websockets.broadcast(members, message)

    backend = RawBackend(antenna, url, deliver)
    await backend.start()

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/echo"
        if path == "/member":
            await ws.recv()
            members.add(ws)
            try:
                await ws.send("ok")
                await ws.wait_closed()
            finally:
                members.discard(ws)
        elif path == "/pub":
            async for message in ws:
                await backend.publish(str(message))
        elif path == "/sub":
            await ws.recv()
            channel = f"s{id(ws)}"
            await backend.subscribe(channel)
            try:
                await ws.send("ok")
                await ws.wait_closed()
            finally:
                with contextlib.suppress(Exception):
                    await backend.unsubscribe(channel)
        else:
            async for message in ws:
                await ws.send(message)

    async with serve(handler, "127.0.0.1", port):
        await stop.wait()


def xraptor_app(port: int, antenna: str, url: str, transport: str = "websockets") -> XRaptor:
    """The bench app (served natively by ``xraptor`` and ``xraptor-picows``, and by uvicorn
    as ``xraptor-asgi``)."""
    import xraptor
    import xraptor.demo  # registers the chat routes

    @xraptor.XRaptor.register("/echo").as_get
    async def echo(request: xraptor.Request) -> xraptor.Response:
        return xraptor.Response.create(request.request_id, {}, request.payload, request.method)

    @xraptor.XRaptor.register("/slow").as_get
    async def slow(request: xraptor.Request) -> xraptor.Response:
        await asyncio.sleep(SLOW_SECONDS)
        return xraptor.Response.create(request.request_id, {}, request.payload, request.method)

    @xraptor.XRaptor.register("/stream").as_sub
    async def stream(request: xraptor.Request) -> None:
        return None

    server = xraptor.XRaptor(
        "127.0.0.1", port, antenna=url if antenna != "memory" else "memory", transport=transport
    )
    keep_history_from_env(server)
    return server


#: set by ``bench/history.py``: the bench room keeps this many messages of history
HISTORY_ENV = "XRAPTOR_BENCH_HISTORY"


def keep_history_from_env(server: XRaptor) -> None:
    """Give the bench room history when ``XRAPTOR_BENCH_HISTORY`` is a size (history.py)."""
    import os
    import re

    size = int(os.environ.get(HISTORY_ENV) or 0)
    if size:
        server.configure_rooms(re.escape(ROOM) + "$", history_size=size)


async def xraptor_main(
    port: int, antenna: str, url: str, stop: asyncio.Event, transport: str = "websockets"
) -> None:
    server = xraptor_app(port, antenna, url, transport)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.close()


async def xraptor_asgi_main(
    port: int, antenna: str, url: str, stop: asyncio.Event, ws: str = DEFAULT_ASGI_WS
) -> None:
    """The same app through ``server.asgi_app()``, served by uvicorn with the lifespan on
    (the antenna starts and stops with it)."""
    server = xraptor_app(port, antenna, url)
    await serve_uvicorn(server.asgi_app(), port, stop, ws=ws, lifespan="on")


async def serve_uvicorn(
    app: Any, port: int, stop: asyncio.Event, *, ws: str, lifespan: Literal["on", "off"]
) -> None:
    """Serve an ASGI app with uvicorn on this process's event loop until ``stop``."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",  # serve() runs on the loop common.run_loop made (uvloop or asyncio)
        lifespan=lifespan,
        ws=ws,  # uvicorn's WebSocket implementation ("auto" is websockets-sansio)
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.get_running_loop().create_task(server.serve())
    stopping = asyncio.get_running_loop().create_task(stop.wait())
    # uvicorn catches SIGTERM/SIGINT itself while serving; either way, both tasks end here
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving


async def sio_main(
    port: int, antenna: str, url: str, stop: asyncio.Event, ws: str = "auto"
) -> None:
    """python-socketio on uvicorn; handlers run concurrently (its default ``async_handlers``)."""
    import socketio  # type: ignore[import-untyped,unused-ignore]

    if antenna == "nats":
        raise SystemExit("python-socketio has no NATS client manager")
    manager = socketio.AsyncRedisManager(url) if antenna == "redis" else None
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)

    async def fast(sid: str, data: Any) -> Any:
        return data

    async def slow(sid: str, data: Any) -> Any:
        await asyncio.sleep(SLOW_SECONDS)
        return data

    async def join(sid: str, data: Any) -> str:
        await sio.enter_room(sid, ROOM)
        return "ok"

    async def pub(sid: str, data: Any) -> None:
        await sio.emit("msg", data, room=ROOM)

    for name, handler in (("fast", fast), ("slow", slow), ("join", join), ("pub", pub)):
        sio.on(name, handler)
    await serve_uvicorn(socketio.ASGIApp(sio), port, stop, ws=ws, lifespan="off")


async def broadcaster_main(
    port: int, antenna: str, url: str, stop: asyncio.Event, ws: str = "auto"
) -> None:
    """encode/broadcaster on Starlette, as its README's chat example uses it: a task per
    member forwards the room's events to its WebSocket."""
    from broadcaster import Broadcast  # type: ignore[import-not-found,unused-ignore]
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    if antenna == "nats":
        raise SystemExit("broadcaster has no NATS backend")
    broadcast = Broadcast(url if antenna == "redis" else "memory://")

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.send_text(await websocket.receive_text())

    async def member(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()
            async with broadcast.subscribe(ROOM) as subscriber:

                async def forward() -> None:
                    async for event in subscriber:
                        await websocket.send_text(event.message)

                forwarding = asyncio.get_running_loop().create_task(forward())
                try:
                    await websocket.send_text("ok")
                    while True:  # until the client goes
                        await websocket.receive_text()
                finally:
                    forwarding.cancel()

    async def publish(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await broadcast.publish(ROOM, await websocket.receive_text())

    async def keep_room() -> None:
        # broadcaster 0.3.1 loses members when the first subscribers of a channel subscribe
        # concurrently (each finds no subscriber set while the backend subscribes, and the
        # last one replaces the set: KeyError on leaving, and no delivery with Redis), as
        # the load generator's joins do. One subscriber held from the start keeps the set,
        # so members only add to it; its queue is drained here (one put per message more)
        async with broadcast.subscribe(ROOM) as subscriber:
            async for _ in subscriber:
                pass

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await broadcast.connect()
        keeper = asyncio.get_running_loop().create_task(keep_room())
        try:
            yield
        finally:
            keeper.cancel()
            await broadcast.disconnect()

    app = Starlette(
        routes=[
            WebSocketRoute("/echo", echo),
            WebSocketRoute("/member", member),
            WebSocketRoute("/pub", publish),
        ],
        lifespan=lifespan,
    )
    await serve_uvicorn(app, port, stop, ws=ws, lifespan="on")


MAINS: dict[str, Callable[[int, str, str, asyncio.Event], Awaitable[None]]] = {
    "raw": raw_main,
    "xraptor": xraptor_main,
    "xraptor-asgi": xraptor_asgi_main,
    "xraptor-picows": functools.partial(xraptor_main, transport="picows"),
    "sio": sio_main,
    "broadcaster": broadcaster_main,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=sorted(MAINS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--antenna", choices=["memory", "redis", "nats", "postgres"], default="memory"
    )
    parser.add_argument("--url", default="", help="the Redis / NATS / PostgreSQL URL")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--profile", default="", help="write cProfile stats here on exit")
    parser.add_argument(
        "--ws",
        default=None,
        help="sio, broadcaster, xraptor-asgi: uvicorn's WebSocket implementation (auto, "
        "websockets, websockets-sansio, wsproto; default: auto for sio and broadcaster, "
        f"{DEFAULT_ASGI_WS} for xraptor-asgi)",
    )
    args = parser.parse_args(argv)
    serve = MAINS[args.system]
    if args.system == "sio":
        serve = functools.partial(sio_main, ws=args.ws or "auto")
    elif args.system == "broadcaster":
        serve = functools.partial(broadcaster_main, ws=args.ws or "auto")
    elif args.system == "xraptor-asgi":
        serve = functools.partial(xraptor_asgi_main, ws=args.ws or DEFAULT_ASGI_WS)
    raise_nofile()
    profile = cProfile.Profile() if args.profile else None

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if profile is not None:
            profile.enable()
        try:
            await serve(args.port, args.antenna, args.url, stop)
        finally:
            if profile is not None:
                profile.disable()

    run_loop(runner(), args.loop)
    if profile is not None:
        profile.dump_stats(args.profile)
        with open(args.profile + ".txt", "w") as out:
            stats = pstats.Stats(profile, stream=out)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(40)
    sys.exit(0)


if __name__ == "__main__":
    main()
