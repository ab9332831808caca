"""End to end: SUB/UNSUB streams, rooms, isolation between connections, cleanup."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import xraptor
from core_support import ClientFactory, ServerFactory, error_code
from xraptor import Broadcast, Request, Response, XRaptor


def _stream_routes() -> None:
    @XRaptor.register("/ticks").as_sub
    async def ticks(request: Request) -> Response:
        # posted before the handler even returns: must reach the client
        await XRaptor.get_antenna().post(request.request_id, "first push")
        return Response.create(request.request_id, {}, '{"subscribed": true}', request.method)

    @XRaptor.register("/ticks").as_unsub
    async def unticks(request: Request) -> Response:
        return Response.create(request.request_id, {}, '{"bye": true}', request.method)

    @XRaptor.register("/push").as_post
    async def push(request: Request) -> Response:
        target = json.loads(request.payload)
        await XRaptor.get_antenna().post(target["to"], target["message"])
        return Response.create(request.request_id, {}, "ok", request.method)

    @XRaptor.register("/broken-sub").as_sub
    async def broken(request: Request) -> None:
        raise RuntimeError("nope")


def _chat_routes() -> None:
    from xraptor import demo

    for route in ("/chat_messages", "/send_message_to_chat_room"):
        XRaptor.register(route)
    XRaptor.register("/chat_messages").as_sub(demo.join_chat)
    XRaptor.register("/chat_messages").as_unsub(demo.leave_chat)
    XRaptor.register("/send_message_to_chat_room").as_post(demo.send_message)


async def test_push_posted_by_the_sub_handler_arrives(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _stream_routes()
    client = await make_client(await make_server())
    sub = await client.send("/ticks", "SUB")
    push = await client.recv()
    ack = await client.recv()
    assert push == {"request_id": sub, "payload": "first push", "header": {}, "method": "SUB"}
    assert ack["payload"] == '{"subscribed": true}' and ack["method"] == "SUB"


async def test_unsub_ends_the_stream(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _stream_routes()
    server = await make_server()
    client = await make_client(server)
    sub = await client.send("/ticks", "SUB")
    await client.recv(), await client.recv()
    await client.send("/push", "POST", {"to": sub, "message": "one"})
    first, answer = await client.recv(), await client.recv()
    assert first["payload"] == "one" and answer["payload"] == "ok"
    bye = await client.request("/ticks", "UNSUB", request_id=sub)
    assert bye["payload"] == '{"bye": true}'
    assert sub not in server.streams and server.antenna.watched_channels() == []
    assert (await client.request("/push", "POST", {"to": sub, "message": "two"}))["payload"] == "ok"
    assert await client.nothing()
    assert error_code(await client.request("/ticks", "UNSUB", request_id=sub)) == "unknown_stream"


async def test_sub_handler_failure_frees_the_stream(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _stream_routes()
    server = await make_server()
    client = await make_client(server)
    answer = await client.request("/broken-sub", "SUB", request_id="b1")
    assert error_code(answer) == "handler_error"
    assert "b1" not in server.streams and server.antenna.watched_channels() == []
    assert server.metrics.streams_active == 0


async def test_foreign_sub_and_unsub_of_a_live_request_id_are_refused(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _stream_routes()
    server = await make_server()
    owner, intruder = await make_client(server), await make_client(server)
    await owner.send("/ticks", "SUB", request_id="victim")
    await owner.recv(), await owner.recv()
    assert (
        error_code(await intruder.request("/ticks", "SUB", request_id="victim")) == "stream_in_use"
    )
    assert (
        error_code(await intruder.request("/ticks", "UNSUB", request_id="victim"))
        == "not_stream_owner"
    )
    # the owner's stream still works and the intruder received nothing of it
    await intruder.send("/push", "POST", {"to": "victim", "message": "private"})
    assert (await intruder.recv())["payload"] == "ok"
    assert (await owner.recv())["payload"] == "private"
    assert await intruder.nothing()
    # the same id twice on one connection is refused too
    assert error_code(await owner.request("/ticks", "SUB", request_id="victim")) == "stream_in_use"


async def test_room_with_several_members_the_04_chat(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _chat_routes()
    server = await make_server()
    alice, bob, carol = [await make_client(server) for _ in range(3)]
    subs = {}
    for name, client in (("alice", alice), ("bob", bob), ("carol", carol)):
        subs[name] = await client.send("/chat_messages", "SUB", {"chat_id": "room-1"})
    post_id = await bob.send(
        "/send_message_to_chat_room",
        "POST",
        {"chat_id": "room-1", "client_id": "bob", "message": "olá 🦖"},
    )
    for name, client in (("alice", alice), ("bob", bob), ("carol", carol)):
        push = await client.recv()
        if client is bob:  # the room push is written before the POST's own answer
            sent = await bob.recv()
            assert (
                sent["request_id"] == post_id and sent["payload"] == '{"message": "Message sent"}'
            )
        assert push["request_id"] == subs[name] and push["method"] == "SUB"
        assert json.loads(push["payload"]) == {"origin": "bob", "message": "olá 🦖"}
        assert await client.nothing(0.1)
    # carol leaves: she gets the UNSUB answer and no further messages
    bye = await carol.request(
        "/chat_messages", "UNSUB", {"chat_id": "room-1"}, request_id=subs["carol"]
    )
    assert bye["payload"] == '{"message": "tchau!"}'
    await alice.send(
        "/send_message_to_chat_room",
        "POST",
        {"chat_id": "room-1", "client_id": "alice", "message": "2"},
    )
    assert json.loads((await alice.recv())["payload"])["message"] == "2"
    assert (await alice.recv())["payload"] == '{"message": "Message sent"}'
    assert json.loads((await bob.recv())["payload"])["message"] == "2"
    assert await carol.nothing()
    assert set(Broadcast.get("room-1", app=server).members) == {subs["alice"], subs["bob"]}


async def test_room_message_is_one_antenna_delivery_and_one_encoding(
    make_server: ServerFactory, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chat_routes()
    server = await make_server()
    clients = [await make_client(server) for _ in range(20)]
    for client in clients:
        await client.send("/chat_messages", "SUB", {"chat_id": "big"})
    delivered: list[str] = []
    antenna = server.antenna
    original = antenna.deliver

    def counting(channel: str, message: str) -> None:
        delivered.append(channel)
        original(channel, message)

    antenna.deliver = counting  # type: ignore[method-assign]
    encodings: list[str] = []
    real_tail = xraptor.broadcast.push_tail

    def counting_tail(message: str) -> bytes:
        encodings.append(message)
        return real_tail(message)

    monkeypatch.setattr(xraptor.broadcast, "push_tail", counting_tail)
    await clients[0].send(
        "/send_message_to_chat_room", "POST", {"chat_id": "big", "client_id": "x", "message": "m"}
    )
    for client in clients:
        assert json.loads((await client.recv())["payload"])["message"] == "m"
    assert delivered == ["big"]
    assert len(encodings) == 1  # the frame tail is built once for 20 members
    assert antenna.watched_channels().count("big") == 1


async def test_disconnect_frees_every_stream_task_and_subscription(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _chat_routes()
    _stream_routes()
    server = await make_server()
    await asyncio.sleep(0)
    tasks_before = len(asyncio.all_tasks())
    ws = await connect(f"ws://127.0.0.1:{server.port}")
    for i in range(50):
        await ws.send(
            json.dumps(
                {
                    "request_id": f"t{i}",
                    "payload": "",
                    "header": {},
                    "route": "/ticks",
                    "method": "SUB",
                }
            )
        )
        await ws.send(
            json.dumps(
                {
                    "request_id": f"c{i}",
                    "payload": json.dumps({"chat_id": f"room{i % 5}"}),
                    "header": {},
                    "route": "/chat_messages",
                    "method": "SUB",
                }
            )
        )
    for _ in range(100):
        await ws.recv()
    await asyncio.sleep(0.1)
    assert len(server.streams) == 100 and server.metrics.streams_active == 100
    assert len(server.antenna.watched_channels()) == 105  # 100 streams + 5 rooms
    await ws.close()
    for _ in range(100):
        if not server.streams and not server.antenna.watched_channels():
            break
        await asyncio.sleep(0.02)
    await Broadcast.settle()
    assert server.streams == {}
    assert server.antenna.watched_channels() == []
    assert server.metrics.streams_active == 0 and server.metrics.connections_active == 0
    assert server.rooms == {}
    assert len(asyncio.all_tasks()) <= tasks_before


async def test_slow_consumer_is_closed_and_counted(make_server: ServerFactory) -> None:
    _stream_routes()
    server = await make_server(max_buffer=64 * 1024)
    # a client that stops reading, with a small kernel receive buffer
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    ws = await connect(f"ws://127.0.0.1:{server.port}", max_queue=1, sock=sock)
    await ws.send(
        json.dumps(
            {"request_id": "slow", "payload": "", "header": {}, "route": "/ticks", "method": "SUB"}
        )
    )
    while "slow" not in server.streams:
        await asyncio.sleep(0.01)
    antenna = server.antenna
    big = base64.b64encode(os.urandom(75_000)).decode()  # incompressible (permessage-deflate is on)
    for _ in range(400):
        await antenna.post("slow", big)
        if server.metrics.slow_consumer_disconnects_total:
            break
        await asyncio.sleep(0)
    assert server.metrics.slow_consumer_disconnects_total == 1
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    for _ in range(100):
        if not server.streams:
            break
        await asyncio.sleep(0.02)
    assert server.streams == {}


async def test_gap_notice_reaches_streams_and_room_members(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _chat_routes()
    _stream_routes()
    server = await make_server()
    client = await make_client(server)
    tick = await client.send("/ticks", "SUB")
    await client.recv(), await client.recv()
    chat = await client.send("/chat_messages", "SUB", {"chat_id": "g"})
    await asyncio.sleep(0.05)
    server.antenna.report_gap()
    notices = {}
    for _ in range(2):
        message = await client.recv()
        notices[message["request_id"]] = message
    assert set(notices) == {tick, chat}
    for notice in notices.values():
        assert notice["header"] == {"notice": "gap"} and notice["method"] == "SUB"
        assert json.loads(notice["payload"])["code"] == "gap"
    assert server.metrics.gap_notices_total == 2


async def test_antenna_selection_by_name_url_and_04_way() -> None:
    server = XRaptor("127.0.0.1", 0, antenna="memory")
    assert isinstance(server.antenna, xraptor.antennas.MemoryAntenna)
    assert server.get_antenna() is server.antenna
    # on the class, outside a request: the default app's, which apps without one use
    XRaptor.set_antenna(xraptor.antennas.MemoryAntenna)  # as 0.4's own tests do
    plain = XRaptor("127.0.0.1", 0)
    assert plain.antenna is XRaptor.get_antenna() and plain.antenna is not server.antenna
    assert isinstance(
        XRaptor("127.0.0.1", 0, antenna="memory://").antenna, xraptor.antennas.MemoryAntenna
    )
    legacy = XRaptor("localhost", 8765)
    legacy.set_antenna(xraptor.antennas.MemoryAntenna)
    assert isinstance(legacy.get_antenna(), xraptor.antennas.MemoryAntenna)
    with pytest.raises(xraptor.UnknownAntennaError) as unknown:
        XRaptor("127.0.0.1", 0, antenna="kafka")
    assert "pip install xraptor-kafka" in str(unknown.value) and "memory" in str(unknown.value)

    class Old04Antenna:
        def subscribe(self, antenna_id: str) -> None: ...
        async def post(self, antenna_id: str, message: str) -> None: ...
        async def is_alive(self, antenna_id: str) -> bool: ...

    with pytest.raises(TypeError, match=r"Migrating a 0\.4 antenna"):
        legacy.set_antenna(Old04Antenna)


async def test_a_connection_cannot_open_more_than_max_streams(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _stream_routes()
    server = await make_server(max_streams=3)
    client, other = await make_client(server), await make_client(server)
    for i in range(3):
        await client.send("/ticks", "SUB", request_id=f"m{i}")
        await client.recv(), await client.recv()
    refused = await client.request("/ticks", "SUB", request_id="m3")
    assert error_code(refused) == "too_many_streams"
    assert "m3" not in server.streams and len(server.streams) == 3
    # the open streams still work, and other connections have their own budget
    await client.send("/push", "POST", {"to": "m1", "message": "still"})
    assert (await client.recv())["payload"] == "still"
    assert (await client.recv())["payload"] == "ok"
    await other.send("/ticks", "SUB", request_id="o1")
    assert (await other.recv())["payload"] == "first push"
    # after an UNSUB there is room again
    await client.request("/ticks", "UNSUB", request_id="m0")
    await client.send("/ticks", "SUB", request_id="m4")
    assert (await client.recv())["payload"] == "first push"


async def test_server_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_streams"):
        XRaptor("127.0.0.1", 0, max_streams=0)
    with pytest.raises(ValueError, match="max_buffer"):
        XRaptor("127.0.0.1", 0, max_buffer=-1)
    with pytest.raises(ValueError, match="port"):
        XRaptor("127.0.0.1", 70000)


async def test_room_member_served_elsewhere_is_forwarded_to_and_pruned(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xraptor.broadcast, "_PRUNE_SECONDS", 0.05)
    server = await make_server()
    antenna = server.antenna
    # "elsewhere-1" is a stream another process serves: here, a plain subscription
    elsewhere = antenna.subscribe("elsewhere-1")
    await elsewhere.open()
    room = Broadcast.get("mixed", app=server)
    await room.join("elsewhere-1")
    assert room.members == ["elsewhere-1"]
    await room.post("hello over there")
    assert await asyncio.wait_for(elsewhere.__anext__(), 2) == "hello over there"
    # once nobody listens on the member's channel, the room prunes it and closes
    await elsewhere.aclose()
    for _ in range(100):
        if "mixed" not in server.rooms:
            break
        await asyncio.sleep(0.02)
    assert room.members == [] and "mixed" not in server.rooms
    await Broadcast.settle()
    assert antenna.watched_channels() == []
