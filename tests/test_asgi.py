"""xraptor through ASGI: mounted in FastAPI and served by real uvicorn, hypercorn
and granian processes, and served by each of them on its own.

The app is ``tests/asgi_apps/mounted.py``: the 0.4 chat at ``/realtime``, a guarded
app at ``/secure`` and a FastAPI route at ``/hello``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core_support import free_port, wait_for_port
from xraptor import Client, ClientError

APPS = Path(__file__).parent / "asgi_apps"


def serve(*argv: str) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", *argv, "--port", str(port)]
    if argv[0] == "hypercorn":
        command = [sys.executable, "-m", *argv, "--bind", f"127.0.0.1:{port}"]
    elif argv[0] == "granian":
        command = [sys.executable, "-m", "granian", "--interface", "asgi", *argv[1:]]
        command += ["--host", "127.0.0.1", "--port", str(port)]
    else:
        command += ["--host", "127.0.0.1"]
    process = subprocess.Popen(
        command, cwd=APPS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_port(port, process)
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output = process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
        assert "Traceback" not in output, output


SERVERS = ["uvicorn", "hypercorn", "granian"]


@pytest.fixture(scope="module", params=SERVERS)
def fastapi_host(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from serve(request.param, "mounted:api")


@pytest.fixture(scope="module", params=SERVERS)
def standalone_host(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from serve(request.param, "mounted:asgi")


def http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def chat(url: str) -> None:
    async with Client(url) as alice, Client(url) as bob:
        room = {"chat_id": "asgi-room"}
        async with bob.subscribe("/chat_messages", room) as stream:
            reply = await alice.post(
                "/send_message_to_chat_room", {**room, "client_id": "alice", "message": "hi bob"}
            )
            assert reply.payload == '{"message": "Message sent"}'
            push = await asyncio.wait_for(anext(stream), 5)
            assert json.loads(push.payload) == {"origin": "alice", "message": "hi bob"}


def test_fastapi_route_and_mounted_http_endpoints(fastapi_host: str) -> None:
    assert http_get(f"http://{fastapi_host}/hello")[::2] == (200, '{"hello":"from FastAPI"}')
    status, kind, body = http_get(f"http://{fastapi_host}/realtime/health")
    assert (status, kind, json.loads(body)["status"]) == (200, "application/json", "ok")
    status, kind, body = http_get(f"http://{fastapi_host}/realtime/_xraptor/client.js")
    assert (status, kind) == (200, "text/javascript; charset=utf-8")
    assert "XRaptorClient" in body
    assert http_get(f"http://{fastapi_host}/realtime/")[1].startswith("text/html")  # the chat page
    assert "xraptor_connections_total" in http_get(f"http://{fastapi_host}/realtime/metrics")[2]
    assert http_get(f"http://{fastapi_host}/realtime/nothing-here")[0] == 404


async def test_python_clients_chat_through_the_mount(fastapi_host: str) -> None:
    await chat(f"ws://{fastapi_host}/realtime/")


async def test_the_guard_refuses_without_a_token_and_admits_with_it(fastapi_host: str) -> None:
    url = f"ws://{fastapi_host}/secure/"
    with pytest.raises(InvalidStatus) as refused:
        async with Client(url):
            pass
    assert refused.value.response.status_code == 401
    assert b"a valid token is required" in refused.value.response.body
    with pytest.raises(InvalidStatus) as wrong:
        async with Client(url, token="not-it"):
            pass
    assert wrong.value.response.status_code == 401
    async with Client(url, token="let-me-in") as client:
        reply = await client.get("/whoami")
        assert json.loads(reply.payload) == {"user": "alice", "path": "/secure/"}
        # the mounts are two apps: the chat's routes are not the guarded app's
        with pytest.raises(ClientError) as unknown:
            await client.get("/pid")
        assert unknown.value.code == "unknown_route"


async def test_a_cross_origin_page_is_refused_with_403(fastapi_host: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            f"ws://{fastapi_host}/realtime/",
            origin="https://evil.example",  # type: ignore[arg-type]
        ):
            pass
    assert refused.value.response.status_code == 403


async def test_bad_input_gets_an_error_and_the_connection_goes_on(fastapi_host: str) -> None:
    async with connect(f"ws://{fastapi_host}/realtime/") as ws:
        await ws.send("not json")
        assert json.loads(json.loads(await ws.recv())["payload"])["code"] == "invalid_json"
        await ws.send(b'{"request_id": "b1", "route": "/pid", "method": "GET", "payload": ""}')
        assert json.loads(await ws.recv())["request_id"] == "b1"


async def test_standalone_asgi_servers_chat_and_serve_health(standalone_host: str) -> None:
    status, _, body = http_get(f"http://{standalone_host}/health")
    assert status == 200 and json.loads(body)["antenna"]["name"] == "memory"
    await chat(f"ws://{standalone_host}/")


async def test_closed_by_the_server_is_seen_by_the_client(fastapi_host: str) -> None:
    # a message over max_size (1 MiB by default) closes the connection with 1009
    async with Client(f"ws://{fastapi_host}/realtime/") as client:
        with pytest.raises(ConnectionClosed) as closed:
            await client.post("/pid", "x" * (2**20 + 10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
