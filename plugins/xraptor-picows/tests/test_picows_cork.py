"""Pushes made in one event-loop iteration go out together, per connection (``Cork``):
in order, intact, before anything written after them, and in one TCP segment."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from picows_support import CLOSE, TEXT, AppFactory, RawSocket

from xraptor import Broadcast, Request, Response, XRaptor
from xraptor_picows.connection import text_frames


def _routes(app: XRaptor) -> None:
    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        Broadcast.get(request.payload, app=app).add_member(request.request_id)

    @app.register("/burst").as_post
    async def burst(request: Request) -> Response:
        """Post one message per size in the payload (``"10,200"``), all in this iteration
        (the memory antenna delivers as it posts)."""
        for n, size in enumerate(json.loads(request.payload)):
            await app.antenna.post("lobby", f"{n}:" + "x" * size)
        return Response.create(request.request_id, {}, "sent", request.method)

    @app.register("/burst").as_get
    async def close_after(request: Request) -> Response:
        """Post two messages, then close the caller's connection in the same iteration."""
        await app.antenna.post("lobby", "before the close 1")
        await app.antenna.post("lobby", "before the close 2")
        connection = request.connection
        assert connection is not None
        asyncio.get_running_loop().create_task(connection.close(1001, "going away"))
        return Response.create(request.request_id, {}, "closing", request.method)


def _request(request_id: str, route: str, method: str, payload: str) -> bytes:
    body = {"request_id": request_id, "payload": payload, "header": {}, "route": route}
    return json.dumps({**body, "method": method}).encode()


def _data_segments_in(raw: RawSocket) -> int:
    """Segments with data this socket received (Linux ``tcp_info.tcpi_data_segs_in``)."""
    sock: socket.socket = raw.writer.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


async def _join(raw: RawSocket, request_id: str) -> None:
    raw.send_frame(TEXT, _request(request_id, "/room", "SUB", "lobby"))
    await Broadcast.settle()


async def test_a_burst_arrives_in_order_and_in_one_segment(make_app: AppFactory) -> None:
    app = await make_app(_routes)
    member = await RawSocket.connect(app.port)
    sender = await RawSocket.connect(app.port)
    await _join(member, "m")
    await asyncio.sleep(0.05)
    # a short frame, a 16-bit length and a 64-bit length header
    sizes = [3, 300, 70_000, 5]
    before = _data_segments_in(member)
    sender.send_frame(TEXT, _request("b", "/burst", "POST", json.dumps(sizes)))
    assert (await sender.recv_json())["payload"] == "sent"
    pushes = [await member.recv_json() for _ in sizes]
    assert [p["request_id"] for p in pushes] == ["m"] * len(sizes)
    messages = [p["payload"] for p in pushes]
    assert messages == [f"{n}:" + "x" * size for n, size in enumerate(sizes)]
    # written as one: the loopback MSS (65,483 bytes) cuts the 70 KB into two segments
    assert _data_segments_in(member) - before <= 3
    member.close()
    sender.close()


async def test_one_push_per_iteration_is_one_segment_each(make_app: AppFactory) -> None:
    app = await make_app(_routes)
    member = await RawSocket.connect(app.port)
    sender = await RawSocket.connect(app.port)
    await _join(member, "m")
    await asyncio.sleep(0.05)
    before = _data_segments_in(member)
    for n in range(4):
        sender.send_frame(TEXT, _request(f"b{n}", "/burst", "POST", "[10]"))
        assert (await sender.recv_json())["payload"] == "sent"
        assert (await member.recv_json())["payload"] == "0:" + "x" * 10
    assert _data_segments_in(member) - before == 4
    member.close()
    sender.close()


async def test_pushes_go_before_the_answer_written_after_them(make_app: AppFactory) -> None:
    """The sender is a member too: its pushes were made before its answer was written."""
    app = await make_app(_routes)
    raw = await RawSocket.connect(app.port)
    await _join(raw, "m")
    await asyncio.sleep(0.05)
    raw.send_frame(TEXT, _request("b", "/burst", "POST", "[1, 2]"))
    frames = [await raw.recv_json() for _ in range(3)]
    assert [(f["request_id"], f["payload"]) for f in frames] == [
        ("m", "0:x"),
        ("m", "1:xx"),
        ("b", "sent"),
    ]
    raw.close()


async def test_pushes_go_before_the_close_frame(make_app: AppFactory) -> None:
    app = await make_app(_routes)
    raw = await RawSocket.connect(app.port)
    await _join(raw, "m")
    await asyncio.sleep(0.05)
    raw.send_frame(TEXT, _request("c", "/burst", "GET", ""))
    seen: list[str] = []
    while True:
        opcode, payload, _ = await raw.recv_frame()
        if opcode == CLOSE:
            break
        seen.append(json.loads(payload)["payload"])
    assert seen[:2] == ["before the close 1", "before the close 2"]
    assert struct.unpack("!H", payload[:2])[0] == 1001
    raw.close()


def test_text_frames_headers() -> None:
    """Unmasked, final text frames with the three length encodings of RFC 6455."""
    short, medium, long = b"a" * 125, b"b" * 126, b"c" * 65536
    data = text_frames([short, medium, long])
    assert data[:2] == bytes((0x81, 125)) and data[2:127] == short
    rest = data[127:]
    assert rest[:4] == bytes((0x81, 126)) + (126).to_bytes(2, "big")
    rest = rest[4 + 126 :]
    assert rest[:10] == bytes((0x81, 127)) + (65536).to_bytes(8, "big")
    assert rest[10:] == long
