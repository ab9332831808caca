"""permessage-deflate: ``compression="shared" | "deflate" | None`` against real websockets
clients, and the DEFLATE pieces of :mod:`xraptor.deflate` checked with zlib."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame

import xraptor.deflate
from core_support import TRANSPORT, Client, ServerFactory
from xraptor import Broadcast, Request, Response, XRaptor
from xraptor.deflate import SharedCompressor, check_compression, stored

pytestmark = pytest.mark.skipif(
    TRANSPORT != "websockets", reason="permessage-deflate is the websockets transport's"
)

FLUSH_END = b"\x00\x00\xff\xff"


def inflate(payload: bytes, decoder: Any = None) -> bytes:
    """What a receiver does (RFC 7692 §7.2.2): append the flush end, inflate."""
    decoder = decoder or zlib.decompressobj(-15)
    data: bytes = decoder.decompress(payload + FLUSH_END)
    return data


def push(request_id: str, message: str) -> bytes:
    return xraptor.protocol.push_prefix(request_id) + xraptor.protocol.push_tail(message)


# ----- the DEFLATE pieces -------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    ["hi", "olá 🦖 " * 50, "x" * 300_000, json.dumps({"k": list(range(2000))})],
    ids=["short", "unicode", "large", "json"],
)
def test_prefix_and_tail_pieces_inflate_to_the_frame(message: str) -> None:
    compressor = SharedCompressor(15)
    ids = ["a", "olá-🦖", "r" * 70_000, "3f2a9c1e-5b7d-4e8a-9c1f-2b3d4e5f6a7b"]
    # one decoder across messages, as a client keeping its context does, and a fresh one
    kept = zlib.decompressobj(-15)
    for request_id in ids:
        frame = push(request_id, message)
        deflated = compressor.deflate(frame)
        assert inflate(deflated) == frame
        assert inflate(deflated, kept) == frame
    if len(message) > 100:
        assert len(compressor.deflate(push("a", message))) < len(push("a", message))


def test_the_tail_is_compressed_once_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    compressed: list[bytes] = []
    original = SharedCompressor.compress

    def counting(self: SharedCompressor, data: bytes) -> bytes:
        compressed.append(data)
        return original(self, data)

    monkeypatch.setattr(SharedCompressor, "compress", counting)
    compressor = SharedCompressor(12)
    tail = xraptor.protocol.push_tail("the same message " * 20)
    frames = [xraptor.protocol.push_prefix(f"member-{i}") + tail for i in range(100)]
    outs = [compressor.deflate(frame) for frame in frames]
    assert compressed == [tail]  # once for 100 members
    for frame, out in zip(frames, outs, strict=True):
        prefix = frame[: -len(tail)]
        assert out.startswith(stored(prefix))  # each member's prefix on its own
        assert inflate(out, zlib.decompressobj(-12)) == frame
    # the next message: compressed once again; a frame without the tail shape: on its own
    compressor.deflate(xraptor.protocol.push_prefix("member-0") + xraptor.protocol.push_tail("2"))
    assert inflate(compressor.deflate(b'{"other":1}')) == b'{"other":1}'
    assert len(compressed) == 3


def test_a_compressed_message_refers_to_no_earlier_one() -> None:
    """Each piece starts from a clean state: a receiver that resets its decoder per
    message (server_no_context_takeover) inflates every one of them."""
    compressor = SharedCompressor(15)
    text = "repeated text, repeated text, repeated text " * 10
    first = compressor.compress(text.encode())
    second = compressor.compress(text.encode())
    assert first == second  # the same bytes: nothing of the first one is referred to
    assert inflate(second) == text.encode()


def test_stored_blocks_split_at_65535_bytes() -> None:
    data = bytes(range(256)) * 600  # 153,600 bytes: three stored blocks
    blocks = stored(data)
    assert len(blocks) == len(data) + 3 * 5
    assert inflate(blocks) == data
    assert inflate(stored(b"")) == b""


@pytest.mark.parametrize("value", ["gzip", "Shared", True, 1, b"shared", ""])
def test_a_wrong_compression_is_refused_with_the_choices(value: object) -> None:
    with pytest.raises(ValueError, match="'shared', 'deflate' or None"):
        XRaptor("127.0.0.1", 0, compression=value)  # type: ignore[arg-type]
    server = XRaptor("127.0.0.1", 0)
    with pytest.raises(ValueError, match="got"):
        server.compression = value  # type: ignore[assignment]
    assert server.compression == "shared"
    assert [check_compression(v) for v in ("shared", "deflate", None)] == [
        "shared",
        "deflate",
        None,
    ]


# ----- real servers and clients --------------------------------------------------------------


class Recorded:
    """A websockets client connection that records the RSV1 bit of every data frame."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.rsv1: list[bool] = []
        for extension in ws.protocol.extensions:
            original = extension.decode

            def decode(frame: Frame, *, max_size: int | None = None, _o: Any = original) -> Frame:
                if frame.opcode.name in ("TEXT", "BINARY"):
                    self.rsv1.append(frame.rsv1)
                decoded: Frame = _o(frame, max_size=max_size)
                return decoded

            extension.decode = decode  # type: ignore[method-assign]

    @property
    def negotiated(self) -> str | None:
        assert self.ws.response is not None
        value: str | None = self.ws.response.headers.get("Sec-WebSocket-Extensions")
        return value


Offer = Callable[[], Any]

OFFERS: dict[str, Any] = {
    # what websockets' client offers by default (as browsers: client_max_window_bits)
    "default": "deflate",
    "client-no-takeover": [ClientPerMessageDeflateFactory(client_no_context_takeover=True)],
    "small-window": [ClientPerMessageDeflateFactory(server_max_window_bits=10)],
    "none": None,
}


@pytest_asyncio.fixture
async def open_client() -> AsyncIterator[Callable[..., Any]]:
    opened: list[ClientConnection] = []

    async def factory(server: XRaptor, offer: str = "default") -> tuple[Client, Recorded]:
        option = OFFERS[offer]
        kwargs: dict[str, Any] = (
            {"compression": option}
            if not isinstance(option, list)
            else {"compression": None, "extensions": option}
        )
        ws = await connect(f"ws://127.0.0.1:{server.port}", max_size=None, **kwargs)
        opened.append(ws)
        return Client(ws), Recorded(ws)

    yield factory
    for ws in opened:
        await ws.close()


def _routes() -> None:
    @XRaptor.register("/room").as_sub
    async def join(request: Request) -> None:
        Broadcast.get("deflate-room").add_member(request.request_id)

    @XRaptor.register("/room").as_post
    async def post(request: Request) -> Response:
        await Broadcast.get("deflate-room").post(request.payload)
        return Response.create(request.request_id, {}, "posted", request.method)

    @XRaptor.register("/echo").as_get
    async def echo(request: Request) -> Response:
        return Response.create(request.request_id, {"n": 1}, request.payload * 3, request.method)


MESSAGES = [
    "hello",
    "olá 🦖 — ünïcödé ✓",
    "large " + "abcdefghij" * 40_000,
    "olá 🦖 — ünïcödé ✓ " * 200,
    "x" * 1024,
]
#: which of the frames a member receives are compressed: the SUB's acknowledgment and
#: the short messages are under MIN_SIZE and go plain
COMPRESSED = [False, False, False, True, True, True]


async def _fan_out(
    server: XRaptor, members: list[tuple[Client, Recorded]], poster: Client
) -> list[str]:
    ids = []
    for client, _ in members:
        request_id = f"id-{len(ids)}-ü"
        ids.append(await client.send("/room", "SUB", header={"ack": True}, request_id=request_id))
    for client, _ in members:  # each SUB asked for an acknowledgment: subscribed
        assert (await client.recv(10))["header"] == {"ack": True}
    for message in MESSAGES:
        answer = await poster.request("/room", "POST", message)
        assert answer["payload"] == "posted"
        for (client, _), request_id in zip(members, ids, strict=True):
            got = await client.recv(10)
            assert got == {
                "request_id": request_id,
                "payload": message,
                "header": {},
                "method": "SUB",
            }
    return ids


@pytest.mark.parametrize("offer", ["default", "client-no-takeover", "small-window"])
async def test_shared_room_pushes_decode_for_every_member(
    make_server: ServerFactory, open_client: Callable[..., Any], offer: str
) -> None:
    _routes()
    server = await make_server()
    members = [await open_client(server, offer) for _ in range(30)]
    plain = [await open_client(server, "none") for _ in range(3)]
    poster, _ = await open_client(server)
    await _fan_out(server, members + plain, poster)
    negotiated = members[0][1].negotiated or ""
    assert negotiated.startswith("permessage-deflate")
    assert "server_no_context_takeover" in negotiated
    assert "client_no_context_takeover" in negotiated
    if offer == "small-window":
        assert "server_max_window_bits=10" in negotiated
    for _, recorded in members:
        assert recorded.rsv1 == COMPRESSED  # every push from MIN_SIZE on compressed
    for _, recorded in plain:
        assert recorded.negotiated is None and recorded.ws.protocol.extensions == []


async def test_shared_mixes_window_sizes_in_one_room(
    make_server: ServerFactory, open_client: Callable[..., Any]
) -> None:
    """A client that limits the server's window gets pushes compressed with that window
    (its decoder refuses a longer distance), next to members with the full window."""
    _routes()
    server = await make_server()
    members = [await open_client(server, offer) for offer in ("default", "small-window") * 5]
    poster, _ = await open_client(server)
    await _fan_out(server, members, poster)


async def test_shared_answers_and_compressed_requests(
    make_server: ServerFactory, open_client: Callable[..., Any]
) -> None:
    _routes()
    server = await make_server()
    client, recorded = await open_client(server)
    for payload in ("a", "olá 🦖 " * 1000, "z" * 200_000, "y" * 400):
        answer = await client.request("/echo", "GET", payload)
        assert answer["payload"] == payload * 3 and answer["header"] == {"n": 1}
    assert recorded.rsv1 == [False, True, True, True]  # compressed from MIN_SIZE on
    # websockets' client compresses its requests: the server decoded them
    assert client.ws.protocol.extensions[0].local_no_context_takeover is True


async def test_shared_decodes_clients_that_keep_their_context(
    make_server: ServerFactory, open_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without client_no_context_takeover, requests refer to earlier ones: websockets'
    decoder on the server keeps its context and decodes them."""
    monkeypatch.setattr(xraptor.deflate, "CLIENT_NO_CONTEXT_TAKEOVER", False)
    _routes()
    server = await make_server()
    members = [await open_client(server) for _ in range(5)]
    assert "client_no_context_takeover" not in (members[0][1].negotiated or "")
    assert members[0][0].ws.protocol.extensions[0].local_no_context_takeover is False
    poster, _ = await open_client(server)
    for _ in range(3):  # repeated requests: back-references into the previous ones
        answer = await poster.request("/echo", "GET", "same payload " * 20)
        assert answer["payload"] == "same payload " * 60
    await _fan_out(server, members, poster)


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_deflate_and_none(
    make_server: ServerFactory, open_client: Callable[..., Any], compression: str | None
) -> None:
    _routes()
    server = await make_server(compression=compression)
    members = [await open_client(server) for _ in range(10)]
    poster, _ = await open_client(server)
    await _fan_out(server, members, poster)
    negotiated = members[0][1].negotiated
    if compression is None:
        assert negotiated is None
        assert all(recorded.rsv1 == [] for _, recorded in members)  # nothing to decode
    else:
        # websockets' own: context takeover on the server's side
        assert negotiated is not None and negotiated.startswith("permessage-deflate")
        assert "server_no_context_takeover" not in negotiated
        assert all(recorded.rsv1 == [True] * len(COMPRESSED) for _, recorded in members)


async def test_stream_pushes_are_compressed(
    make_server: ServerFactory, open_client: Callable[..., Any]
) -> None:
    @XRaptor.register("/ticks").as_sub
    async def subscribe(request: Request) -> None:
        return None

    server = await make_server()
    client, recorded = await open_client(server)
    sub = await client.send("/ticks", "SUB", header={"ack": True})
    assert (await client.recv())["header"] == {"ack": True}
    ticks = [f"tick {n} ✓ " * 200 for n in range(3)] + ["short"]
    for tick in ticks:
        await server.antenna.post(sub, tick)
    for tick in ticks:
        got = await client.recv()
        assert got["request_id"] == sub and got["payload"] == tick
    assert recorded.rsv1 == [False, True, True, True, False]


async def test_no_push_is_written_inside_a_fragmented_message(
    make_server: ServerFactory, open_client: Callable[..., Any]
) -> None:
    """While websockets sends a fragmented message (xraptor sends none; an app could,
    through ``connection.ws``), a compressed push is not written in the middle of it:
    it goes through websockets, which refuses it as it would any frame."""
    server = await make_server()
    client, recorded = await open_client(server)
    await client.request("/_xraptor/ping")
    (connection,) = server._connections
    big = xraptor.protocol.push_prefix("s") + xraptor.protocol.push_tail("z" * 4000)
    protocol = connection.ws.protocol
    protocol.expect_continuation_frame = True
    assert connection.enqueue(big) is False
    protocol.expect_continuation_frame = False
    assert connection.enqueue(big) is True
    assert json.loads(await client.ws.recv())["payload"] == "z" * 4000
    assert recorded.rsv1 == [False, True]  # the ping's answer, then the push
