"""The picows transport end to end: requests, streams, rooms, HTTP endpoints, admission, TLS."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from picows_support import AppFactory, RawSocket, http_get, request_text, upgrade_headers
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from xraptor import Broadcast, Client, Handshake, Refuse, Request, Response, XRaptor
from xraptor.plugins import get_plugins
from xraptor.testing.tls import self_signed_cert
from xraptor_picows.connection import PicowsConnection


def test_the_plugin_offers_the_picows_transport() -> None:
    assert "picows" in get_plugins().transports.names()
    result = subprocess.run(
        [sys.executable, "-m", "xraptor.cli", "plugins"], capture_output=True, text=True, timeout=30
    )
    assert "picows: xraptor-picows" in result.stdout
    assert "  transports: picows" in result.stdout


def _room_routes(app: XRaptor) -> None:
    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        Broadcast.get(request.payload, app=app).add_member(request.request_id)

    @app.register("/room").as_post
    async def say(request: Request) -> Response:
        await app.antenna.post("lobby", request.payload)
        return Response.create(request.request_id, {}, "sent", request.method)


async def test_requests_streams_and_rooms(make_app: AppFactory) -> None:
    app = await make_app(_room_routes)
    url = f"ws://127.0.0.1:{app.port}"
    async with Client(url) as alice, Client(url) as bob:
        assert (await alice.get("/echo", "hello")).payload == "hello"
        async with alice.subscribe("/room", "lobby") as a, bob.subscribe("/room", "lobby") as b:
            assert (await bob.post("/room", "hi all")).payload == "sent"
            assert (await anext(a)).payload == "hi all"
            assert (await anext(b)).payload == "hi all"
        connections = list(app._connections)
        assert connections and all(isinstance(c, PicowsConnection) for c in connections)
        assert {c.transport for c in connections} == {"picows"}
    assert app.metrics.pushes_total == 2


def _slow_routes(app: XRaptor) -> None:
    @app.register("/slow").as_get
    async def slow(request: Request) -> Response:
        await asyncio.sleep(float(request.payload))
        return Response.create(request.request_id, {}, "finished " + request.payload)


async def test_many_requests_in_flight_are_answered(make_app: AppFactory) -> None:
    app = await make_app(_slow_routes)

    async with Client(f"ws://127.0.0.1:{app.port}") as client:
        delays = [f"0.0{n % 10}" for n in range(300)]
        answers = await asyncio.gather(*(client.get("/slow", d) for d in delays))
    assert [a.payload for a in answers] == [f"finished {d}" for d in delays]


async def test_http_endpoints_and_plain_gets(make_app: AppFactory) -> None:
    app = await make_app()
    app.add_http_route("/page.html", "text/html", b"<p>hi</p>")
    health = await http_get(app.port, "/health")
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"
    assert health.headers["connection"] == "close"
    metrics = await http_get(app.port, "/metrics")
    assert metrics.status == 200 and b"xraptor_connections_active" in metrics.body
    client_js = await http_get(app.port, "/_xraptor/client.js")
    assert client_js.status == 200 and client_js.headers["content-type"].startswith("text/java")
    page = await http_get(app.port, "/page.html")
    assert (page.status, page.body) == (200, b"<p>hi</p>")
    # an upgrade of /health is answered as a health check, as on websockets
    assert (await http_get(app.port, "/health", upgrade_headers())).status == 200
    # a plain GET of another path is told to upgrade
    other = await http_get(app.port, "/")
    assert other.status == 426 and other.headers["upgrade"] == "websocket"
    # a malformed request is a 400
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"NONSENSE\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
    writer.close()


async def test_the_xraptor_subprotocol_is_answered_when_offered(make_app: AppFactory) -> None:
    app = await make_app()
    url = f"ws://127.0.0.1:{app.port}"
    async with connect(url, subprotocols=[Subprotocol("xraptor")]) as ws:
        assert ws.subprotocol == "xraptor"
        # websockets' client offers permessage-deflate: picows negotiates no extension
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
    async with connect(url, subprotocols=[Subprotocol("chat")]) as ws:
        assert ws.subprotocol is None
    async with connect(url) as ws:
        assert ws.subprotocol is None


@pytest.mark.parametrize("compression", ["shared", "deflate"])
async def test_no_compression_is_negotiated_whatever_the_policy(
    make_app: AppFactory, compression: str
) -> None:
    """picows has no permessage-deflate: ``compression=`` negotiates nothing here (README)."""
    app = await make_app(compression=compression)
    async with connect(f"ws://127.0.0.1:{app.port}") as ws:  # offers permessage-deflate
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []


async def test_another_origin_gets_403_before_the_upgrade(make_app: AppFactory) -> None:
    app = await make_app()
    refused = await http_get(
        app.port, "/", [*upgrade_headers(), ("Origin", "https://evil.example")]
    )
    assert refused.status == 403
    assert refused.body.startswith(b"Forbidden: cross-origin WebSocket refused")
    same = await http_get(
        app.port, "/", [*upgrade_headers(), ("Origin", f"http://127.0.0.1:{app.port}")]
    )
    assert same.status == 101
    assert app.metrics.handshake_refusals_total == 1


async def test_an_async_guard_is_awaited_before_the_upgrade(make_app: AppFactory) -> None:
    """picows decides upgrades synchronously; the gate awaits the guard first, so a
    guard that waits (a database, a backend) still refuses with its HTTP status."""
    connection_path = []

    def routes(app: XRaptor) -> None:
        @app.register("/path").as_get
        async def path(request: Request) -> Response:
            assert request.connection is not None
            connection_path.append(request.connection.path)
            connection_path.append(request.connection.headers["Authorization"])
            return Response.create(request.request_id, {}, "")

    app = await make_app(routes)
    seen: list[Handshake] = []

    @app.on_connect
    async def check(handshake: Handshake) -> object:
        await asyncio.sleep(0.05)  # really suspends
        seen.append(handshake)
        if handshake.token != "s3cret":
            raise Refuse(401, "a valid token is required")
        return {"user": "alice"}

    url = f"ws://127.0.0.1:{app.port}/?room=1"
    with pytest.raises(InvalidStatus) as refused:
        await Client(url, token="wrong").connect()
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"] == "Bearer"
    assert refused.value.response.body == b"a valid token is required\n"
    async with Client(url, token="s3cret") as client:
        who = json.loads((await client.get("/whoami")).payload)
    assert who == {"identity": {"user": "alice"}, "ip": "127.0.0.1"}
    assert [(h.path, h.query, h.remote_ip) for h in seen] == [("/", {"room": "1"}, "127.0.0.1")] * 2
    async with Client(url, token="s3cret") as client:
        await client.get("/path")
    assert connection_path == ["/?room=1", "Bearer s3cret"]


async def test_a_guard_that_fails_answers_500(make_app: AppFactory) -> None:
    app = await make_app()

    @app.on_connect
    async def broken(handshake: Handshake) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("database down")

    answer = await http_get(app.port, "/", upgrade_headers())
    assert answer.status == 500


async def test_a_drain_refuses_upgrades_with_503_and_closes_with_1001(
    make_app: AppFactory,
) -> None:
    app = await make_app(_slow_routes, drain_timeout=5)
    raw = await RawSocket.connect(app.port)
    raw.send_frame(0x1, request_text("s1", "/slow", "0.5").encode())
    await asyncio.sleep(0.1)
    closing = asyncio.ensure_future(app.close())
    await asyncio.sleep(0.1)
    assert (await http_get(app.port, "/", upgrade_headers())).status == 503
    health = await http_get(app.port, "/health")
    assert health.status == 503 and json.loads(health.body)["status"] == "draining"
    assert (await raw.recv_json())["payload"] == "finished 0.5"
    assert await raw.close_code() == (1001, b"server shutting down")
    await closing


def _client_tls(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def test_tls(make_app: AppFactory, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    app = await make_app(ssl=server_tls)
    async with Client(f"wss://127.0.0.1:{app.port}", ssl=_client_tls(cert)) as client:
        assert (await client.get("/echo", "over tls")).payload == "over tls"
        answers = await asyncio.gather(*(client.get("/echo", "x" * 70_000) for _ in range(20)))
        assert all(len(a.payload) == 70_000 for a in answers)


async def test_keepalive_drops_a_peer_that_never_answers_pings(make_app: AppFactory) -> None:
    app = await make_app(ping_interval=0.2, ping_timeout=0.2)
    async with connect(f"ws://127.0.0.1:{app.port}") as ws:  # answers pings
        mute = await RawSocket.connect(app.port)  # does not
        opcode, _, _ = await mute.recv_frame(2)
        assert opcode == 0x9  # a ping
        # no pong: the server gives up after ping_timeout (a close frame, then TCP)
        frames = []
        try:
            while True:
                frames.append((await mute.recv_frame(2))[0])
        except asyncio.IncompleteReadError:
            pass
        assert 0x8 in frames
        await asyncio.sleep(0.5)
        await ws.send(request_text("still"))
        assert json.loads(await ws.recv())["request_id"] == "still"
        mute.close()


async def test_the_demo_chat_on_picows() -> None:
    from xraptor import demo

    server = demo.make_server("127.0.0.1", 0, transport="picows")
    await server.start()
    try:
        page = await http_get(server.port, "/")
        assert page.status == 200 and b"<html" in page.body.lower()
        url = f"ws://127.0.0.1:{server.port}"
        room = {"chat_id": "lobby"}
        async with (
            Client(url) as alice,
            Client(url) as bob,
            alice.subscribe("/chat_messages", room) as messages,
        ):
            said = {**room, "client_id": "bob", "message": "hello"}
            await bob.post("/send_message_to_chat_room", said)
            pushed = json.loads((await anext(messages)).payload)
        assert pushed == {"origin": "bob", "message": "hello"}
    finally:
        await server.close()
