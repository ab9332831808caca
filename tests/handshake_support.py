"""A raw HTTP/1.1 client for handshake tests: full control of Host, Origin and the rest."""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: str


async def raw_get(
    port: int,
    path: str = "/",
    headers: list[tuple[str, str]] | None = None,
    *,
    upgrade: bool = True,
    host: str | None = None,
) -> HttpAnswer:
    """Send one GET (a WebSocket upgrade unless ``upgrade=False``) and read the answer.

    ``host`` replaces the ``Host`` header (``""`` sends none); the connection is
    closed after the status line and headers (and the body when not a 101).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1"]
        if host != "":
            lines.append(f"Host: {host if host is not None else f'127.0.0.1:{port}'}")
        if upgrade:
            key = base64.b64encode(os.urandom(16)).decode()
            lines += [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            ]
        lines += [f"{name}: {value}" for name, value in headers or []]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        answer_headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                answer_headers[name.strip().lower()] = value.strip()
        body = b""
        if status != 101:
            length = int(answer_headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), 5)
        return HttpAnswer(status, answer_headers, body.decode())
    finally:
        writer.close()
        await writer.wait_closed()
