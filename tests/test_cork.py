"""A connection's pushes of one event-loop iteration go out together (:mod:`xraptor.cork`):
in order, intact, before anything written after them, and in one TCP segment.

Runs on the transport of ``XRAPTOR_TRANSPORT`` (the picows session runs it on picows);
on websockets with each compression policy a client can end up with.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from core_support import TRANSPORT
from xraptor import Broadcast, Request, Response, XRaptor
from xraptor.cork import text_frames
from xraptor.deflate import SharedCompressor

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts segments with Linux's TCP_INFO"
)

#: (server compression, whether the client offers permessage-deflate)
POLICIES = (
    [("shared", True), ("deflate", True), (None, False)]
    if TRANSPORT == "websockets"
    else [(None, False)]  # picows negotiates no extension
)


def _routes(app: XRaptor) -> None:
    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        Broadcast.get("lobby", app=app).add_member(request.request_id)

    @app.register("/burst").as_post
    async def burst(request: Request) -> Response:
        """Post one message per size in the payload (``[10, 200]``), all in this
        iteration (the memory antenna delivers as it posts)."""
        for n, size in enumerate(json.loads(request.payload)):
            await app.antenna.post("lobby", f"{n}:" + "x" * size)
        return Response.create(request.request_id, {}, "sent", request.method)

    @app.register("/burst").as_put
    async def close_after(request: Request) -> Response:
        """Post two messages, then close the caller's connection in the same iteration."""
        await app.antenna.post("lobby", "before the close 1")
        await app.antenna.post("lobby", "before the close 2")
        connection = request.connection
        assert connection is not None
        await connection.close(1001, "going away")
        return Response.create(request.request_id, {}, "closed", request.method)


@pytest_asyncio.fixture(params=POLICIES, ids=lambda p: f"{p[0]}-{'offer' if p[1] else 'plain'}")
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[XRaptor, bool]]:
    compression, offer = request.param
    app = XRaptor("127.0.0.1", 0, transport=TRANSPORT, compression=compression)
    _routes(app)  # routes are loaded at start
    await app.start()
    yield app, offer
    await app.close()


async def _client(app: XRaptor, offer: bool) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{app.port}", compression="deflate" if offer else None, max_size=None
    )


def _request(request_id: str, route: str, method: str, payload: Any = "") -> str:
    if not isinstance(payload, str):
        payload = json.dumps(payload)
    body = {"request_id": request_id, "payload": payload, "header": {}, "route": route}
    return json.dumps({**body, "method": method})


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return data


def _data_segments_in(ws: ClientConnection) -> int:
    """Segments with data the client's socket received (Linux ``tcpi_data_segs_in``)."""
    sock: socket.socket = ws.transport.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


async def _member(app: XRaptor, offer: bool, request_id: str = "m") -> ClientConnection:
    ws = await _client(app, offer)
    await ws.send(_request(request_id, "/room", "SUB"))
    await Broadcast.settle(app)
    await asyncio.sleep(0.05)  # the SUB's own frames (none) and the handshake are read
    return ws


@pytest.mark.parametrize(
    "sizes",
    [
        [3, 300, 5, 200, 124],  # short and 16-bit lengths: one TCP segment
        [3, 70_000, 5],  # and a 64-bit length (uncompressed): more than a segment
    ],
    ids=["small", "large"],
)
async def test_a_burst_arrives_in_order_and_in_one_write(
    served: tuple[XRaptor, bool], sizes: list[int]
) -> None:
    app, offer = served
    member = await _member(app, offer)
    sender = await _client(app, offer)
    before = _data_segments_in(member)
    await sender.send(_request("b", "/burst", "POST", sizes))
    assert (await _recv(sender))["payload"] == "sent"
    pushes = [await _recv(member) for _ in sizes]
    assert [p["request_id"] for p in pushes] == ["m"] * len(sizes)
    assert [p["payload"] for p in pushes] == [f"{n}:" + "x" * s for n, s in enumerate(sizes)]
    if max(sizes) < 1000:
        assert _data_segments_in(member) - before == 1  # one write, not one per frame
    await member.close()
    await sender.close()


async def test_one_push_per_iteration_is_a_write_each(served: tuple[XRaptor, bool]) -> None:
    app, offer = served
    member = await _member(app, offer)
    sender = await _client(app, offer)
    before = _data_segments_in(member)
    for n in range(4):
        await sender.send(_request(f"b{n}", "/burst", "POST", [10]))
        assert (await _recv(sender))["payload"] == "sent"
        assert (await _recv(member))["payload"] == "0:" + "x" * 10
    assert _data_segments_in(member) - before == 4
    await member.close()
    await sender.close()


async def test_pushes_go_before_the_answer_written_after_them(
    served: tuple[XRaptor, bool],
) -> None:
    """The sender is a member too: its pushes were made before its answer was written."""
    app, offer = served
    ws = await _member(app, offer)
    await ws.send(_request("b", "/burst", "POST", [1, 2]))
    frames = [await _recv(ws) for _ in range(3)]
    assert [(f["request_id"], f["payload"]) for f in frames] == [
        ("m", "0:x"),
        ("m", "1:xx"),
        ("b", "sent"),
    ]
    await ws.close()


async def test_pushes_go_before_the_close_frame(served: tuple[XRaptor, bool]) -> None:
    app, offer = served
    ws = await _member(app, offer)
    await ws.send(_request("c", "/burst", "PUT"))
    seen = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["payload"])
    assert seen[:2] == ["before the close 1", "before the close 2"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


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


async def test_max_buffer_bounds_the_pushes_of_one_iteration() -> None:
    """A member that stopped reading is a slow consumer even when everything it is
    sent comes in one iteration: the pushes waiting are written past ``LIMIT`` bytes,
    and the next push checks the buffer."""
    app = XRaptor("127.0.0.1", 0, transport=TRANSPORT, compression=None, max_buffer=64 * 1024)
    _routes(app)
    await app.start()
    try:
        member = await _client(app, False)
        await member.send(_request("m", "/room", "SUB"))
        await Broadcast.settle(app)
        await asyncio.sleep(0.05)
        member.transport.pause_reading()
        sender = await _client(app, False)
        await sender.send(_request("f", "/burst", "POST", [10_000] * 2000))
        assert (await _recv(sender))["payload"] == "sent"
        assert app.metrics.slow_consumer_disconnects_total == 1
        # 20 MB were posted; what waits in the process stays near the bound
        assert max(c.buffered() for c in app._connections) < 2 * 2**20
        member.transport.resume_reading()
        await sender.close()
    finally:
        await app.close()


@pytest.mark.skipif(TRANSPORT != "websockets", reason="compression is the websockets transport's")
async def test_shared_compression_compresses_each_message_once_in_a_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Corking keeps the fan-out's order for the compressor: it holds one message's
    tail, so each message is compressed once for every member, not once per member."""
    calls: list[int] = []
    compress = SharedCompressor.compress

    def counting(self: SharedCompressor, data: bytes) -> bytes:
        calls.append(len(data))
        return compress(self, data)

    monkeypatch.setattr(SharedCompressor, "compress", counting)
    app = XRaptor("127.0.0.1", 0, transport=TRANSPORT, compression="shared")
    _routes(app)
    await app.start()
    try:
        members = [await _member(app, True, f"m{n}") for n in range(20)]
        sender = await _client(app, True)
        calls.clear()
        await sender.send(_request("b", "/burst", "POST", [2000, 2000, 2000, 2000]))
        assert (await _recv(sender))["payload"] == "sent"
        for member in members:
            pushes = [await _recv(member) for _ in range(4)]
            assert [p["payload"] for p in pushes] == [f"{n}:" + "x" * 2000 for n in range(4)]
        assert len(calls) == 4
    finally:
        await app.close()
