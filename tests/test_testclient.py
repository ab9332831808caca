"""xraptor.testing.TestClient: an app's client in process, with no socket.

The parity tests run the same scenario twice, over the network (a native server
and ``xraptor.Client``) and in process (``TestClient``), and expect the same
replies and the same errors; the socket tests count the process's sockets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest
import pytest_asyncio
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from xraptor import (
    Broadcast,
    Client,
    ClientError,
    Handshake,
    Refuse,
    Request,
    Response,
    XRaptor,
)
from xraptor.antennas import MemoryAntenna
from xraptor.testing import TestClient

TOKENS = {"alice-token": "alice", "bob-token": "bob"}


class Transport:
    """How a test serves an app and connects a client to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.apps: list[XRaptor] = []

    async def start(self, app: XRaptor) -> None:
        self.apps.append(app)
        if self.name == "network":
            await app.start()
        else:
            await app.asgi_app().startup()

    def client(self, app: XRaptor, **options: Any) -> Client:
        if self.name == "network":
            return Client(f"ws://127.0.0.1:{app.port}", **options)
        return TestClient(app, **options)

    async def stop(self, app: XRaptor) -> None:
        if self.name == "network":
            await app.close()
        else:
            await app.asgi_app().shutdown()


@pytest_asyncio.fixture(params=["network", "in-process"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    transport = Transport(request.param)
    yield transport
    for app in transport.apps:
        await transport.stop(app)


def chat_app(**options: Any) -> XRaptor:
    """The README's chat with a connect guard: rooms, a refusal, an identity."""
    app = XRaptor("127.0.0.1", 0, antenna=MemoryAntenna(), **options)

    @app.on_connect
    async def authenticate(handshake: Handshake) -> str:
        user = TOKENS.get(handshake.token or "")
        if user is None:
            raise Refuse(401, "a valid token is required")
        return user

    @app.register("/whoami").as_get
    async def whoami(request: Request) -> Response:
        assert request.connection is not None
        return Response.create(request.request_id, {}, str(request.connection.identity))

    @app.register("/chat_messages").as_sub
    async def join(request: Request) -> None:
        chat_id = json.loads(request.payload)["chat_id"]
        Broadcast.get(chat_id, app=app).add_member(request.request_id)

    @app.register("/chat_messages").as_unsub
    async def leave(request: Request) -> Response:
        chat_id = json.loads(request.payload)["chat_id"]
        Broadcast.get(chat_id, app=app).remove_member(request.request_id)
        return Response.create(request.request_id, {}, '{"message": "tchau!"}')

    @app.register("/send_message_to_chat_room").as_post
    async def send(request: Request) -> Response:
        assert request.connection is not None
        data = json.loads(request.payload)
        message = json.dumps({"from": request.connection.identity, "text": data["text"]})
        await app.get_antenna().post(data["chat_id"], message)
        return Response.create(request.request_id, {}, '{"message": "Message sent"}')

    @app.register("/slow").as_get
    async def slow(request: Request) -> Response:
        await asyncio.sleep(30)
        return Response.create(request.request_id, {}, "late")

    return app


def sockets() -> int:
    """The process's open sockets: TCP, UDP and Unix."""
    return len(psutil.Process().net_connections(kind="all"))


# ----- parity with xraptor.Client -----------------------------------------------------------


async def test_a_chat_room_with_two_clients(transport: Transport) -> None:
    app = chat_app()
    await transport.start(app)
    async with (
        transport.client(app, token="alice-token") as alice,
        transport.client(app, token="bob-token") as bob,
    ):
        async with (
            alice.subscribe("/chat_messages", {"chat_id": "lobby"}) as alice_sees,
            bob.subscribe("/chat_messages", {"chat_id": "lobby"}) as bob_sees,
        ):
            reply = await bob.post("/send_message_to_chat_room", {"chat_id": "lobby", "text": "hi"})
            assert reply.payload == '{"message": "Message sent"}'
            for stream in (alice_sees, bob_sees):
                push = await asyncio.wait_for(anext(stream), 5)
                assert json.loads(push.payload) == {"from": "bob", "text": "hi"}
                assert push.request_id == stream.request_id
        assert app.metrics.connections_active == 2


async def test_a_refused_sub_raises_the_same_client_error(transport: Transport) -> None:
    app = chat_app(max_streams=1)
    await transport.start(app)
    async with transport.client(app, token="alice-token") as client:
        with pytest.raises(ClientError) as unknown:
            async with client.subscribe("/nowhere"):
                pass
        assert unknown.value.code == "unknown_route"
        async with client.subscribe("/chat_messages", {"chat_id": "lobby"}):
            with pytest.raises(ClientError) as too_many:
                async with client.subscribe("/chat_messages", {"chat_id": "other"}):
                    pass
            assert too_many.value.code == "too_many_streams"
        # the connection serves on
        assert (await client.get("/whoami")).payload == "alice"


async def test_a_connect_guard_refuses_without_a_token_and_admits_with_one(
    transport: Transport,
) -> None:
    app = chat_app()
    await transport.start(app)
    for options in ({}, {"token": "wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            async with transport.client(app, **options):
                pass
        response = refused.value.response
        assert response.status_code == 401
        assert response.reason_phrase == "Unauthorized"
        assert response.body == b"a valid token is required\n"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert app.metrics.connections_total == 0  # no WebSocket was opened
    async with transport.client(app, token="alice-token") as client:
        assert (await client.get("/whoami")).payload == "alice"


async def test_a_cross_origin_browser_is_refused_with_403(transport: Transport) -> None:
    app = chat_app()
    await transport.start(app)
    with pytest.raises(InvalidStatus) as refused:
        await transport.client(app, headers={"Origin": "https://evil.example"}).connect()
    assert refused.value.response.status_code == 403
    assert b"cross-origin" in refused.value.response.body


async def test_no_reply_in_time_is_a_timeout_error(transport: Transport) -> None:
    app = chat_app()
    await transport.start(app)
    async with transport.client(app, token="alice-token", timeout=0.2) as client:
        with pytest.raises(TimeoutError):
            await client.get("/slow")
        assert (await client.get("/whoami")).payload == "alice"


async def test_a_message_over_max_size_closes_with_1009(transport: Transport) -> None:
    app = chat_app(max_size=1000)
    await transport.start(app)
    async with transport.client(app, token="alice-token") as client:
        with pytest.raises(ConnectionClosedError) as closed:
            await client.post("/send_message_to_chat_room", {"text": "x" * 2000})
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert client.closed


async def test_a_shutdown_ends_streams_with_1001(transport: Transport) -> None:
    app = chat_app()
    await transport.start(app)
    async with (
        transport.client(app, token="alice-token") as client,
        client.subscribe("/chat_messages", {"chat_id": "lobby"}) as stream,
    ):
        await transport.stop(app)
        assert [push async for push in stream] == []  # the stream ended cleanly
        with pytest.raises(ConnectionClosed) as closed:
            await client.get("/whoami")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_guards_and_handlers_see_the_path_as_sent(transport: Transport) -> None:
    app = XRaptor("127.0.0.1", 0)
    seen: list[tuple[str, str, dict[str, str]]] = []

    @app.on_connect
    async def look(handshake: Handshake) -> None:
        seen.append((handshake.path, handshake.raw_query, handshake.query))

    @app.register("/path").as_get
    async def path(request: Request) -> Response:
        assert request.connection is not None
        return Response.create(request.request_id, {}, request.connection.path)

    await transport.start(app)
    sent = "/caf%C3%A9/a%20b?x=%20y"
    client = (
        Client(f"ws://127.0.0.1:{app.port}{sent}")
        if transport.name == "network"
        else TestClient(app, sent)
    )
    async with client:
        assert (await client.get("/path")).payload == sent
    assert seen == [("/caf%C3%A9/a%20b", "x=%20y", {"x": " y"})]


# ----- in process ---------------------------------------------------------------------------


async def test_a_test_client_opens_no_socket_and_a_network_client_does() -> None:
    before = sockets()
    app = chat_app()
    async with (
        TestClient(app, token="alice-token") as alice,
        TestClient(app, token="bob-token") as bob,
    ):
        with pytest.raises(InvalidStatus):
            await TestClient(app).connect()
        async with alice.subscribe("/chat_messages", {"chat_id": "lobby"}) as stream:
            await bob.post("/send_message_to_chat_room", {"chat_id": "lobby", "text": "hi"})
            assert json.loads((await anext(stream)).payload)["from"] == "bob"
            assert sockets() == before
    assert sockets() == before

    # the same count sees a served app and its client
    served = chat_app()
    await served.start()
    try:
        async with Client(f"ws://127.0.0.1:{served.port}", token="alice-token") as client:
            assert (await client.get("/whoami")).payload == "alice"
            assert sockets() >= before + 3  # the listener and both ends of the connection
    finally:
        await served.close()


async def test_the_handshake_carries_path_query_headers_and_peer() -> None:
    app = XRaptor()
    seen: list[Handshake] = []

    @app.on_connect
    async def look(handshake: Handshake) -> str:
        seen.append(handshake)
        return "someone"

    @app.register("/headers").as_get
    async def headers(request: Request) -> Response:
        assert request.connection is not None
        connection = request.connection
        found = {
            "path": connection.path,
            "remote_ip": connection.remote_ip,
            "api_key": connection.headers.get("X-Api-Key"),
        }
        return Response.create(request.request_id, {}, json.dumps(found))

    async with TestClient(
        app,
        "/realtime?room=lobby&x=%20y",
        headers={"X-Api-Key": "k1", "Cookie": "session=abc"},
        subprotocols=["xraptor"],
        remote_ip="10.0.0.7",
    ) as client:
        found = json.loads((await client.get("/headers")).payload)
    assert found == {
        "path": "/realtime?room=lobby&x=%20y",
        "remote_ip": "10.0.0.7",
        "api_key": "k1",
    }
    (handshake,) = seen
    assert handshake.path == "/realtime"
    assert handshake.query == {"room": "lobby", "x": " y"}
    assert handshake.headers["Host"] == "testserver"
    assert handshake.cookies == {"session": "abc"}
    assert handshake.remote_ip == "10.0.0.7"
    assert handshake.token is None


async def test_a_guard_that_fails_is_a_500_and_a_slow_one_a_timeout() -> None:
    app = XRaptor()

    @app.on_connect
    async def guard(handshake: Handshake) -> None:
        if handshake.query.get("slow"):
            await asyncio.sleep(30)
        raise RuntimeError("the user database is gone")

    async with app.asgi_app().lifespan():
        with pytest.raises(InvalidStatus) as failed:
            await TestClient(app).connect()
        assert failed.value.response.status_code == 500
        with pytest.raises(TimeoutError):
            await TestClient(app, "/?slow=1", timeout=0.2).connect()


async def test_the_first_client_starts_the_app_and_the_last_one_shuts_it_down() -> None:
    started: list[str] = []
    app = XRaptor(antenna=MemoryAntenna())

    @app.register("/hello").as_get
    async def hello(request: Request) -> Response:
        started.append(request.request_id)
        return Response.create(request.request_id, {}, "hi")

    asgi = app.asgi_app()
    assert not asgi.started
    async with TestClient(app) as first:
        assert asgi.started
        assert app.antenna.state == "up"
        async with TestClient(app) as second:
            assert (await second.get("/hello")).payload == "hi"
        assert asgi.started  # the first one is still connected
        assert app.metrics.connections_active == 1  # close() waited for the app's side
        assert (await first.get("/hello")).payload == "hi"
    assert not asgi.started
    assert app.antenna.state == "closed"
    assert app.metrics.connections_active == 0

    with pytest.raises(RuntimeError, match="cannot start again"):
        await TestClient(app).connect()


async def test_an_app_started_by_its_lifespan_stays_started() -> None:
    app = XRaptor(antenna=MemoryAntenna())
    asgi = app.asgi_app()
    async with asgi.lifespan():
        for _ in range(2):  # one client after the other
            async with TestClient(app) as client:
                assert (await client.get("/_xraptor/ping")).payload == "pong"
            assert asgi.started
    assert not asgi.started


async def test_the_client_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        TestClient(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start with '/'"):
        TestClient(XRaptor(), "realtime")
    with pytest.raises(ValueError, match="either as token= or as an Authorization header"):
        TestClient(XRaptor(), token="t", headers={"Authorization": "Bearer t"})
