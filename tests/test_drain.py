"""Graceful drain: in-flight requests finish, new work is refused, connections close with 1001."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core_support import ServerFactory, error_code, free_port, start_run, wait_for_port
from xraptor import Request, Response, XRaptor
from xraptor.testing import health

APP = """
import asyncio

import xraptor


@xraptor.XRaptor.register("/big").as_get
async def big(request):
    return xraptor.Response.create(request.request_id, {}, "x" * 200_000)


@xraptor.XRaptor.register("/pid").as_get
async def pid(request):
    import os

    return xraptor.Response.create(request.request_id, {}, str(os.getpid()))


@xraptor.XRaptor.register("/slow").as_get
async def slow(request):
    await asyncio.sleep(float(request.payload))
    return xraptor.Response.create(request.request_id, {}, "done " + request.request_id)


app = xraptor.XRaptor("127.0.0.1", 8765, drain_timeout=DRAIN, close_timeout=CLOSE, EXTRA)
"""

#: a memory antenna under another name, so that `--workers 2` accepts it (each worker
#: then has its own rooms; these tests need none)
SHARED = """
from typing import ClassVar

from xraptor.antennas import MemoryAntenna


class PretendShared(MemoryAntenna):
    name: ClassVar[str] = "pretend-shared"
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    app = APP.replace(", EXTRA", "")
    (tmp_path / "drainapp.py").write_text(app.replace("DRAIN", "10").replace("CLOSE", "2"))
    (tmp_path / "drainapp_short.py").write_text(app.replace("DRAIN", "1").replace("CLOSE", "1"))
    shared = SHARED + APP.replace("EXTRA", "antenna=PretendShared()")
    (tmp_path / "drainapp_workers.py").write_text(
        shared.replace("DRAIN", "10").replace("CLOSE", "2")
    )
    yield tmp_path


def _request(request_id: str, route: str, payload: str = "") -> str:
    return json.dumps(
        {
            "request_id": request_id,
            "payload": payload,
            "header": {},
            "route": route,
            "method": "GET",
        }
    )


async def _close_code(ws: ClientConnection) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed:
        pass
    return ws.close_code


async def _slow_clients_through_sigterm(
    port: int, pid: int, workers: int
) -> tuple[list[str], list[Any]]:
    url = f"ws://127.0.0.1:{port}"
    # with --workers 2 the second worker may still be starting: connect until both
    # answered (bounded), then keep 10 connections with both workers among them
    by_pid: dict[str, list[ClientConnection]] = {}
    deadline = time.monotonic() + 15
    while sum(map(len, by_pid.values())) < 10 or (
        len(by_pid) < workers and time.monotonic() < deadline
    ):
        ws = await connect(url)
        await ws.send(_request("pid", "/pid"))
        by_pid.setdefault(json.loads(await ws.recv())["payload"], []).append(ws)
    spread = [ws for group in itertools.zip_longest(*by_pid.values()) for ws in group if ws]
    clients, extra = spread[:10], spread[10:]
    for ws in extra:
        await ws.close()
    pids = {pid for pid, group in by_pid.items() if any(ws in clients for ws in group)}
    for c, ws in enumerate(clients):
        for n in range(5):
            await ws.send(_request(f"c{c}-{n}", "/slow", "1.5"))
    await asyncio.sleep(0.3)  # all 50 handlers are sleeping now
    os.kill(pid, signal.SIGTERM)
    await asyncio.sleep(0.3)
    during: list[Any] = []
    # draining: /health says so, new upgrades get 503, new requests shutting_down
    during.append(await asyncio.to_thread(health, port))
    try:
        await connect(url)
    except InvalidStatus as refused:
        during.append(refused.response.status_code)
    await clients[0].send(_request("late", "/slow", "0"))
    answers: list[str] = []
    for ws in clients:
        while True:
            data = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if data["request_id"] == "late":
                during.append(error_code(data))
                continue
            answers.append(data["payload"])
            if sum(1 for a in answers if a.startswith(f"done c{clients.index(ws)}-")) == 5:
                break
    codes = [await _close_code(ws) for ws in clients]
    return answers, [during, codes, pids]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_every_request_in_flight_then_closes_with_1001(
    app_dir: Path, workers: int
) -> None:
    port = free_port()
    target = "drainapp:app" if workers == 1 else "drainapp_workers:app"
    process = start_run(app_dir, target, "--port", str(port), "--workers", str(workers))
    try:
        wait_for_port(port, process)
        answers, (during, codes, pids) = asyncio.run(
            _slow_clients_through_sigterm(port, process.pid, workers)
        )
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert sorted(answers) == sorted(f"done c{c}-{n}" for c in range(10) for n in range(5))
    status, body = during[0]
    assert status == 503 and body["status"] == "draining"
    assert during[1] == 503
    assert during[2] == "shutting_down"
    assert codes == [1001] * 10
    assert len(pids) == workers  # with --workers 2, both workers had requests in flight
    assert process.returncode == 0, output


def _silent_client(port: int, requests: list[str]) -> socket.socket:
    """A WebSocket client that completes the handshake, sends requests, never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 101"), reply
    for request in requests:
        payload = request.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


@pytest.mark.parametrize(
    ("case", "requests"),
    [
        ("a request in flight", [_request("never-read", "/slow", "30")]),
        # answers pile up until the server's writes wait for room: sends in flight
        ("a full send buffer", [_request(f"big-{n}", "/big") for n in range(200)]),
    ],
)
def test_a_client_that_never_reads_does_not_hold_the_exit(
    app_dir: Path, case: str, requests: list[str]
) -> None:
    port = free_port()
    process = start_run(app_dir, "drainapp_short:app", "--port", str(port))
    sock = None
    try:
        wait_for_port(port, process)
        sock = _silent_client(port, requests)
        time.sleep(0.5)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
        took = time.monotonic() - start
    finally:
        if sock is not None:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.communicate()
    # drain_timeout (1 s) for what is in flight, close_timeout (1 s) for the silent peer
    assert took < 1 + 1 + 1.5, (case, took, output)
    assert "still in flight after drain_timeout" in output, case


async def test_close_drains_in_process(make_server: ServerFactory) -> None:
    @XRaptor.register("/slow").as_get
    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.5)
        return Response.create(request.request_id, {}, "finished")

    server = await make_server(drain_timeout=5)
    async with connect(f"ws://127.0.0.1:{server.port}") as ws:
        await ws.send(_request("s1", "/slow"))
        await asyncio.sleep(0.1)
        closing = asyncio.ensure_future(server.close())
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["payload"] == "finished"
        assert await _close_code(ws) == 1001
        await closing


@pytest.mark.parametrize("bad", [-1, "10", None])
def test_timeouts_are_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="drain_timeout"):
        XRaptor("127.0.0.1", 0, drain_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="close_timeout"):
        XRaptor("127.0.0.1", 0, close_timeout=bad)  # type: ignore[arg-type]


def test_worker_parent_waits_for_the_drain() -> None:
    from xraptor import cli

    app = XRaptor("127.0.0.1", 0, drain_timeout=40, close_timeout=5)
    assert cli.worker_grace(app) >= 45
    assert cli.worker_grace(XRaptor("127.0.0.1", 0)) >= 12
    assert sys.executable


async def test_a_second_close_waits_for_the_same_shutdown(make_server: ServerFactory) -> None:
    @XRaptor.register("/slow").as_get
    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.3)
        return Response.create(request.request_id, {}, "finished")

    server = await make_server()
    async with connect(f"ws://127.0.0.1:{server.port}") as ws:
        await ws.send(_request("s1", "/slow"))
        await asyncio.sleep(0.05)
        first = asyncio.ensure_future(server.close())
        await asyncio.sleep(0.05)
        await server.close()  # returns only once the shutdown is complete
        assert server.antenna.state == "closed" and first.done()


async def test_shutdown_hooks_run_after_the_connections_closed(
    make_server: ServerFactory,
) -> None:
    from xraptor import get_plugins, hookimpl

    seen: list[tuple[int, str]] = []

    class Hooks:
        @hookimpl
        def xraptor_shutdown(self, server: XRaptor) -> None:
            seen.append((len(server._connections), server.antenna.state))

    get_plugins().register(Hooks(), "drain-hooks")
    try:
        server = await make_server()
        async with connect(f"ws://127.0.0.1:{server.port}") as ws:
            await server.close()
            assert await _close_code(ws) == 1001
    finally:
        get_plugins().unregister("drain-hooks")
    assert seen == [(0, "up")]
