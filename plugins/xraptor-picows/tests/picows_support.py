"""Test support: an app served by the picows transport, raw HTTP and raw WebSocket frames."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from xraptor import Request, Response, XRaptor


@pytest.fixture(autouse=True)
def fresh_xraptor() -> Any:
    XRaptor.reset()
    yield
    XRaptor.reset()


def echo_routes(app: XRaptor) -> None:
    """``GET /echo`` answers the payload; ``GET /whoami`` the connection's identity and IP."""

    @app.register("/echo").as_get
    async def echo(request: Request) -> Response:
        return Response.create(request.request_id, {}, request.payload)

    @app.register("/whoami").as_get
    async def whoami(request: Request) -> Response:
        connection = request.connection
        assert connection is not None
        body = {"identity": connection.identity, "ip": connection.remote_ip}
        return Response.create(request.request_id, {}, json.dumps(body))


AppFactory = Callable[..., Awaitable[XRaptor]]


@pytest_asyncio.fixture
async def make_app() -> AsyncIterator[AppFactory]:
    """Start apps on the picows transport (``routes(app)`` registers more routes before the
    start, ``XRaptor`` options as keywords); close them after."""
    apps: list[XRaptor] = []

    async def factory(routes: Callable[[XRaptor], None] | None = None, **options: Any) -> XRaptor:
        app = XRaptor("127.0.0.1", 0, transport="picows", **options)
        echo_routes(app)
        if routes is not None:
            routes(app)  # routes are loaded at start
        await app.start()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.close()


def request_text(request_id: str, route: str = "/echo", payload: str = "") -> str:
    return json.dumps(
        {
            "request_id": request_id,
            "payload": payload,
            "header": {},
            "route": route,
            "method": "GET",
        }
    )


# ----- raw HTTP -----------------------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def upgrade_headers() -> list[tuple[str, str]]:
    return [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
        ("Sec-WebSocket-Version", "13"),
    ]


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), headers


async def http_get(
    port: int, path: str = "/", headers: list[tuple[str, str]] | None = None
) -> HttpAnswer:
    """One GET (give ``upgrade_headers()`` among ``headers`` for an upgrade); the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{name}: {value}" for name, value in headers or []]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, answer_headers = await read_head(reader)
        body = b""
        if status != 101:
            body = await asyncio.wait_for(
                reader.readexactly(int(answer_headers.get("content-length", "0"))), 5
            )
        return HttpAnswer(status, answer_headers, body)
    finally:
        writer.close()


# ----- raw WebSocket frames -------------------------------------------------------------

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


class RawSocket:
    """A WebSocket client that writes any frame, valid or not, and reads frames as sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, extra: list[tuple[str, str]] | None = None) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = ["GET / HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{name}: {value}" for name, value in upgrade_headers() + (extra or [])]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, _ = await read_head(reader)
        assert status == 101, status
        return cls(reader, writer)

    def send_frame(
        self, opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0
    ) -> None:
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", first, 0x80 | size)
        elif size < 2**16:
            header = struct.pack("!BBH", first, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, size)
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))
        self.writer.write(header + mask + masked)

    async def recv_frame(self, timeout: float = 5.0) -> tuple[int, bytes, bool]:
        """``(opcode, payload, fin)`` of the server's next frame."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await asyncio.wait_for(self.reader.readexactly(size), timeout)
        return first & 0x0F, payload, bool(first & 0x80)

    async def recv_json(self) -> dict[str, Any]:
        opcode, payload, _ = await self.recv_frame()
        assert opcode == TEXT, (opcode, payload)
        data: dict[str, Any] = json.loads(payload)
        return data

    async def close_code(self) -> tuple[int | None, bytes]:
        """Read until the server's close frame: its code (``None`` for an empty one) and
        reason; then answer it and expect the server to close TCP."""
        while True:
            opcode, payload, _ = await self.recv_frame()
            if opcode == CLOSE:
                break
        self.send_frame(CLOSE, payload)
        assert await asyncio.wait_for(self.reader.read(), 5) == b""  # TCP closed
        self.writer.close()
        if not payload:
            return None, b""
        return struct.unpack("!H", payload[:2])[0], payload[2:]

    def close(self) -> None:
        self.writer.close()
