"""Test support: a real server factory and a thin real websockets client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from xraptor import XRaptor


@pytest.fixture(autouse=True)
def fresh_xraptor() -> Any:
    XRaptor.reset()
    yield
    XRaptor.reset()


class Client:
    """A thin test client over a plain websockets connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._n = 0

    def next_id(self) -> str:
        self._n += 1
        return f"{id(self):x}-{self._n}"

    async def send(
        self,
        route: str,
        method: str = "GET",
        payload: Any = "",
        header: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> str:
        request_id = request_id or self.next_id()
        if not isinstance(payload, str):
            payload = json.dumps(payload)
        await self.ws.send(
            json.dumps(
                {
                    "request_id": request_id,
                    "payload": payload,
                    "header": header or {},
                    "route": route,
                    "method": method,
                }
            )
        )
        return request_id

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        data: dict[str, Any] = json.loads(raw)
        return data

    async def request(
        self, route: str, method: str = "GET", payload: Any = "", **kw: Any
    ) -> dict[str, Any]:
        request_id = await self.send(route, method, payload, **kw)
        response = await self.recv()
        assert response["request_id"] == request_id, response
        return response

    async def nothing(self, seconds: float = 0.3) -> bool:
        try:
            message = await asyncio.wait_for(self.ws.recv(), seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected message: {message!r}")


ServerFactory = Callable[..., Awaitable[XRaptor]]

#: the listening transport of the servers these tests start (``make_server`` and, through
#: the environment, ``xraptor run``): ``XRAPTOR_TRANSPORT``, as for ``xraptor run``; the
#: xraptor-picows plugin's session runs the core's serving tests with ``picows``
TRANSPORT = os.environ.get("XRAPTOR_TRANSPORT") or "websockets"


@pytest_asyncio.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[XRaptor] = []

    async def factory(**kwargs: Any) -> XRaptor:
        server = XRaptor("127.0.0.1", 0, **{"transport": TRANSPORT, **kwargs})
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()


ClientFactory = Callable[[XRaptor], Awaitable[Client]]


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    clients: list[ClientConnection] = []

    async def factory(server: XRaptor) -> Client:
        ws = await connect(f"ws://127.0.0.1:{server.port}")
        clients.append(ws)
        return Client(ws)

    yield factory
    for ws in clients:
        await ws.close()


def error_code(response: dict[str, Any]) -> str:
    code: str = json.loads(response["payload"])["code"]
    assert response["header"].get("error") == code
    return code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_run(
    app_dir: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``xraptor run ARGV`` in ``app_dir``, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "xraptor.cli", "run", *argv],
        cwd=app_dir,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(process.communicate()[0])
