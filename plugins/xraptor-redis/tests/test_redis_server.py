"""A real server on the Redis antenna, driven by a real websockets client, while Redis misbehaves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from redis.asyncio import Redis
from redis_support import RedisServer
from websockets.asyncio.client import ClientConnection, connect

from xraptor import Request, Response, XRaptor
from xraptor.testing import eventually, health

PUBLISH_TIMEOUT = 0.5


@pytest_asyncio.fixture
async def server(redis_server: RedisServer) -> AsyncIterator[XRaptor]:
    XRaptor.reset()
    from xraptor import demo

    XRaptor.register("/chat_messages").as_sub(demo.join_chat)
    XRaptor.register("/chat_messages").as_unsub(demo.leave_chat)
    XRaptor.register("/send_message_to_chat_room").as_post(demo.send_message)

    @XRaptor.register("/local").as_get
    async def local(request: Request) -> Response:
        return Response.create(request.request_id, {}, "no redis needed")

    app = XRaptor(
        "127.0.0.1",
        0,
        antenna="redis",
        antenna_options={
            "url": redis_server.url,
            "publish_timeout": PUBLISH_TIMEOUT,
            "reconnect_max_delay": 0.2,
        },
    )
    await app.start()
    try:
        yield app
    finally:
        await app.close()
        XRaptor.reset()


def _request(request_id: str, route: str, method: str, payload: Any = "") -> str:
    if not isinstance(payload, str):
        payload = json.dumps(payload)
    return json.dumps(
        {
            "request_id": request_id,
            "payload": payload,
            "header": {},
            "route": route,
            "method": method,
        }
    )


async def _recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return data


async def _server_connections(redis_server: RedisServer) -> int:
    async with Redis.from_url(redis_server.url, decode_responses=True, protocol=2) as admin:
        me = await admin.client_id()
        return sum(1 for c in await admin.client_list() if int(c["id"]) != me)


async def test_hundreds_of_streams_and_rooms_keep_redis_connections_flat(
    server: XRaptor, redis_server: RedisServer
) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}") as ws:
        await ws.send(
            _request(
                "warm",
                "/send_message_to_chat_room",
                "POST",
                {"chat_id": "w", "client_id": "c", "message": "m"},
            )
        )
        await _recv(ws)
        before = await _server_connections(redis_server)
        for i in range(300):
            await ws.send(
                _request(f"s{i}", "/chat_messages", "SUB", {"chat_id": f"room-{i % 150}"})
            )
        await ws.send(
            _request(
                "p",
                "/send_message_to_chat_room",
                "POST",
                {"chat_id": "room-7", "client_id": "c", "message": "hi"},
            )
        )
        got = [await _recv(ws) for _ in range(3)]  # s7 and s157 are in room-7, plus the POST answer
        assert {m["request_id"] for m in got} == {"s7", "s157", "p"}
        assert len(server.antenna.watched_channels()) == 450  # 300 streams + 150 rooms
        during = await _server_connections(redis_server)
        assert during == before
        assert during <= 1 + 4  # one subscriber connection and the publish pool


async def test_outage_errors_in_bounded_time_serves_local_routes_and_health_follows(
    server: XRaptor, redis_server: RedisServer
) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}") as ws:
        await ws.send(_request("sub", "/chat_messages", "SUB", {"chat_id": "r"}))
        await asyncio.sleep(0.1)
        assert (await asyncio.to_thread(health, server.port))[0] == 200
        redis_server.kill()
        assert await eventually(_async(lambda: server.antenna.state == "down"), 10)
        status, body = await asyncio.to_thread(health, server.port)
        assert status == 503 and body["status"] == "degraded" and body["antenna"]["state"] == "down"

        started = time.monotonic()
        await ws.send(
            _request(
                "p1",
                "/send_message_to_chat_room",
                "POST",
                {"chat_id": "r", "client_id": "c", "message": "lost?"},
            )
        )
        refused = await _recv(ws, 5)
        elapsed = time.monotonic() - started
        assert refused["request_id"] == "p1" and refused["header"] == {
            "error": "backend_unavailable"
        }
        assert elapsed < PUBLISH_TIMEOUT + 1.0

        await ws.send(_request("l1", "/local", "GET"))
        assert (await _recv(ws))["payload"] == "no redis needed"

        redis_server.start()
        gap = await _recv(ws, 15)
        assert gap["request_id"] == "sub" and gap["header"] == {"notice": "gap"}
        assert (await asyncio.to_thread(health, server.port))[0] == 200
        await ws.send(
            _request(
                "p2",
                "/send_message_to_chat_room",
                "POST",
                {"chat_id": "r", "client_id": "c", "message": "back"},
            )
        )
        got = {m["request_id"]: m for m in [await _recv(ws), await _recv(ws)]}
        assert json.loads(got["sub"]["payload"])["message"] == "back"


def _async(check: Any) -> Any:
    async def run() -> bool:
        return bool(check())

    return run
