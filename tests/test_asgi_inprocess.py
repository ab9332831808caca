"""The ASGI transport under a real uvicorn in this process: lifespan, first use,
slow consumers, shutdown, and an app served one way at a time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import xraptor
from core_support import free_port
from xraptor import Broadcast, Client, Request, Response, XRaptor


@contextlib.asynccontextmanager
async def uvicorn_running(app: Any, **options: Any) -> AsyncIterator[uvicorn.Server]:
    """uvicorn serving ``app`` on a free port (``config.port``) until the block ends."""
    port = free_port()
    options.setdefault("lifespan", "on")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not task.done(), "uvicorn stopped before it started"
                await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any, **options: Any) -> AsyncIterator[int]:
    async with uvicorn_running(app, **options) as server:
        yield server.config.port


def feed_app(**options: Any) -> XRaptor:
    app = XRaptor(**options)

    @app.register("/feed").as_sub
    async def feed(request: Request) -> None:
        Broadcast.get("feed").add_member(request.request_id)

    @app.register("/slow").as_post
    async def slow(request: Request) -> Response:
        await asyncio.sleep(float(request.payload))
        return Response.create(request.request_id, {}, "done", request.method)

    return app


async def test_lifespan_starts_and_stops_the_antenna() -> None:
    app = feed_app()
    asgi = app.asgi_app()
    assert app.asgi_app() is asgi
    async with uvicorn_serving(asgi) as port:
        assert asgi.started and app.antenna.describe()["state"] == "up"
        async with Client(f"ws://127.0.0.1:{port}/") as client, client.subscribe("/feed") as feed:
            await app.antenna.post("feed", "one")
            assert (await asyncio.wait_for(anext(feed), 5)).payload == "one"
    assert not asgi.started
    assert app.antenna.describe()["state"] != "up"
    assert app.streams == {} and app.metrics.connections_active == 0


async def test_without_lifespan_the_first_request_starts_the_app() -> None:
    app = feed_app()
    async with uvicorn_serving(app.asgi_app(), lifespan="off") as port:
        assert not app.asgi_app().started
        async with Client(f"ws://127.0.0.1:{port}/") as client:
            assert (await client.post("/slow", "0")).payload == "done"
        assert app.asgi_app().started
    # the host's lifespan helper shuts it down
    await app.asgi_app().shutdown()
    assert not app.asgi_app().started


async def test_lifespan_helper_for_the_host() -> None:
    app = feed_app()
    async with app.asgi_app().lifespan():
        assert app.asgi_app().started
    assert not app.asgi_app().started


async def test_a_slow_consumer_is_closed_with_1013_under_asgi() -> None:
    app = feed_app(max_buffer=64 * 1024)
    async with uvicorn_serving(app.asgi_app()) as port:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        ws = await connect(f"ws://127.0.0.1:{port}/", max_queue=1, sock=sock)
        await ws.send(
            json.dumps(
                {
                    "request_id": "slow",
                    "payload": "",
                    "header": {},
                    "route": "/feed",
                    "method": "SUB",
                }
            )
        )
        while "slow" not in app.streams:
            await asyncio.sleep(0.01)
        big = base64.b64encode(os.urandom(75_000)).decode()
        for _ in range(400):
            await app.antenna.post("feed", big)
            if app.metrics.slow_consumer_disconnects_total:
                break
            await asyncio.sleep(0)
        assert app.metrics.slow_consumer_disconnects_total == 1
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        for _ in range(100):
            if not app.streams:
                break
            await asyncio.sleep(0.02)
        assert app.streams == {}


async def test_uvicorn_shutdown_closes_with_1012_and_cancels_requests_in_flight() -> None:
    app = feed_app()
    tasks_before = len(asyncio.all_tasks())
    client = Client("ws://unused", timeout=5)
    async with uvicorn_running(app.asgi_app()) as server:
        client.url = f"ws://127.0.0.1:{server.config.port}/"
        await client.connect()
        slow = asyncio.create_task(client.post("/slow", "30"))
        while not app._requests_in_flight():
            await asyncio.sleep(0.01)
    # uvicorn closed the WebSocket (1012, service restart) before the lifespan shutdown
    with pytest.raises(ConnectionClosed) as closed:
        await slow
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    await client.close()
    assert app._requests_in_flight() == 0 and app.metrics.connections_active == 0
    assert len(asyncio.all_tasks()) <= tasks_before


async def test_an_app_is_served_natively_or_through_asgi_not_both() -> None:
    app = feed_app(port=0)
    await app.start()
    try:
        with pytest.raises(RuntimeError, match="either natively or through ASGI"):
            await app.asgi_app().startup()
    finally:
        await app.close()
    hosted = feed_app(port=0)
    async with hosted.asgi_app().lifespan():
        with pytest.raises(RuntimeError, match="already served by an ASGI server"):
            await hosted.start()


async def test_class_level_calls_in_handlers_mean_the_asgi_app() -> None:
    app = feed_app(antenna="memory")

    @app.register("/which").as_get
    async def which(request: Request) -> Response:
        same = XRaptor.get_antenna() is app.antenna
        return Response.create(request.request_id, {}, str(same), request.method)

    async with (
        uvicorn_serving(app.asgi_app()) as port,
        Client(f"ws://127.0.0.1:{port}/") as client,
    ):
        assert (await client.get("/which")).payload == "True"
    assert xraptor.XRaptor.get_antenna() is not app.antenna
