"""RFC 6455 above picows' frames: reassembly, limits, UTF-8, protocol errors, closing."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from picows_support import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    AppFactory,
    RawSocket,
    request_text,
)

from xraptor import Request, Response, XRaptor


async def test_a_fragmented_message_is_reassembled(make_app: AppFactory) -> None:
    app = await make_app()
    raw = await RawSocket.connect(app.port)
    message = request_text("f1", payload="café").encode()
    raw.send_frame(TEXT, message[:10], fin=False)
    raw.send_frame(PING, b"between fragments")  # control frames may be interleaved
    raw.send_frame(CONTINUATION, message[10:31], fin=False)
    raw.send_frame(CONTINUATION, message[31:])
    assert await raw.recv_frame() == (PONG, b"between fragments", True)
    answer = await raw.recv_json()
    assert (answer["request_id"], answer["payload"]) == ("f1", "café")
    raw.send_frame(BINARY, request_text("b1", payload="binary").encode())
    assert (await raw.recv_json())["payload"] == "binary"
    raw.send_frame(BINARY, b"\xfe" * 10)  # binary: never closed for its content
    assert json.loads((await raw.recv_json())["payload"])["code"] == "invalid_json"
    raw.send_frame(CLOSE, struct.pack("!H", 1000) + b"bye")
    assert await raw.close_code() == (1000, b"bye")  # the close frame is echoed


async def test_an_empty_close_frame_is_echoed_empty(make_app: AppFactory) -> None:
    app = await make_app()
    raw = await RawSocket.connect(app.port)
    raw.send_frame(CLOSE)
    assert await raw.close_code() == (None, b"")


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([(CONTINUATION, b"{}", True)], 1002),  # a continuation of nothing
        ([(TEXT, b"{", False), (TEXT, b"}", True)], 1002),  # a new message inside one
        ([(TEXT, b"{}", True, 4)], 1002),  # a reserved bit
        ([(TEXT, b"{", False), (CLOSE, struct.pack("!H", 1000), True)], 1002),  # as websockets
        ([(CLOSE, struct.pack("!H", 1005), True)], 1002),  # codes a peer may not send
        ([(CLOSE, struct.pack("!H", 1006), True)], 1002),
        ([(CLOSE, struct.pack("!H", 5000), True)], 1002),
        ([(CLOSE, struct.pack("!H", 0), True)], 1002),
        ([(0x3, b"", True)], 1002),  # a reserved opcode (picows' own check)
        ([(PING, b"x", False)], 1002),  # a fragmented control frame (picows' own check)
        ([(TEXT, b'{"a": "\xc3(', False)], 1007),  # invalid UTF-8 in the first fragment
        ([(TEXT, b'{"a": "\xc3', False), (CONTINUATION, b'("}', True)], 1007),
        ([(TEXT, b'{"a": "\xff"}', True)], 1007),  # the reader's check, unfragmented
        ([(TEXT, b"x" * 2000, True)], 1009),  # one frame over max_size
        ([(TEXT, b"x" * 600, False), (CONTINUATION, b"x" * 600, True)], 1009),  # the message
        ([(BINARY, b"x" * 600, False), (CONTINUATION, b"x" * 600, True)], 1009),
    ],
)
async def test_the_connection_fails_with_the_right_code(
    make_app: AppFactory,
    frames: list[tuple[int, bytes, bool] | tuple[int, bytes, bool, int]],
    code: int,
) -> None:
    app = await make_app(max_size=1024)
    raw = await RawSocket.connect(app.port)
    for opcode, payload, fin, *rsv in frames:
        raw.send_frame(opcode, payload, fin=fin, rsv=rsv[0] if rsv else 0)
    assert (await raw.close_code())[0] == code
    # the server is fine
    other = await RawSocket.connect(app.port)
    other.send_frame(TEXT, request_text("ok", payload="fine").encode())
    assert (await other.recv_json())["payload"] == "fine"
    other.close()


async def test_max_size_none_allows_large_messages(make_app: AppFactory) -> None:
    app = await make_app(max_size=None)
    raw = await RawSocket.connect(app.port)
    big = "x" * (3 * 2**20)
    raw.send_frame(TEXT, request_text("big", payload=big).encode())
    assert len((await raw.recv_json())["payload"]) == len(big)
    raw.close()


def _serial_routes(app: XRaptor) -> None:
    @app.register("/slow").as_get
    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.002)
        return Response.create(request.request_id, {}, request.payload)


async def test_a_flood_is_read_as_fast_as_it_is_served(make_app: AppFactory) -> None:
    """max_inflight=1 and max_queue=4: the socket stops being read while requests wait,
    and nothing is lost or reordered."""
    app = await make_app(_serial_routes, max_inflight=1, max_queue=4)
    raw = await RawSocket.connect(app.port)
    for n in range(200):
        raw.send_frame(TEXT, request_text(f"r{n}", "/slow", str(n)).encode())
    answers = [(await raw.recv_json())["payload"] for _ in range(200)]
    assert answers == [str(n) for n in range(200)]
    raw.send_frame(CLOSE, struct.pack("!H", 1000))
    assert (await raw.close_code())[0] == 1000


async def test_the_server_closes_a_client_that_never_answers_its_close(
    make_app: AppFactory,
) -> None:
    app = await make_app(close_timeout=0.3)
    raw = await RawSocket.connect(app.port)
    raw.send_frame(TEXT, b'{"a": "\xff"}')  # fails with 1007
    opcode, payload, _ = await raw.recv_frame()
    assert (opcode, payload[:2]) == (CLOSE, struct.pack("!H", 1007))
    # no close frame back: TCP is closed after close_timeout
    assert await asyncio.wait_for(raw.reader.read(), 3) == b""
    raw.close()
