"""`xraptor demo` serves the 0.4 chat to a plain websockets client, on the transport
``XRAPTOR_TRANSPORT`` names (the picows session runs this module with ``picows``)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from core_support import TRANSPORT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def demo_port() -> Iterator[int]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "xraptor.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    banner = process.stdout.readline().decode()
    # the environment's XRAPTOR_TRANSPORT (unset: websockets) is the transport it serves on
    assert f"{TRANSPORT} transport" in banner, banner
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        raise AssertionError(f"demo did not start: {process.communicate()[0]!r}")
    yield port
    process.terminate()
    assert process.wait(10) == 0  # SIGTERM is a graceful stop


def _request(request_id: str, route: str, method: str, payload: dict[str, str]) -> str:
    return json.dumps(
        {
            "request_id": request_id,
            "payload": json.dumps(payload),
            "header": {},
            "route": route,
            "method": method,
        }
    )


async def test_demo_chat_with_plain_websockets_clients(demo_port: int) -> None:
    url = f"ws://127.0.0.1:{demo_port}"
    async with connect(url) as alice, connect(url) as bob:
        await alice.send(_request("a-sub", "/chat_messages", "SUB", {"chat_id": "lobby"}))
        await bob.send(_request("b-sub", "/chat_messages", "sub", {"chat_id": "lobby"}))
        await bob.send(
            _request(
                "b-post",
                "/send_message_to_chat_room",
                "POST",
                {"chat_id": "lobby", "client_id": "bob", "message": "hello"},
            )
        )
        a_push = json.loads(await asyncio.wait_for(alice.recv(), 5))
        assert a_push["request_id"] == "a-sub" and a_push["method"] == "SUB"
        assert json.loads(a_push["payload"]) == {"origin": "bob", "message": "hello"}
        received = [json.loads(await asyncio.wait_for(bob.recv(), 5)) for _ in range(2)]
        assert {m["request_id"] for m in received} == {"b-sub", "b-post"}
        await alice.send(_request("a-sub", "/chat_messages", "UNSUB", {"chat_id": "lobby"}))
        bye = json.loads(await asyncio.wait_for(alice.recv(), 5))
        assert bye["payload"] == '{"message": "tchau!"}'
        await alice.send(_request("x", "/send_message_to_chat_room", "POST", {"chat_id": "lobby"}))
        refused = json.loads(await asyncio.wait_for(alice.recv(), 5))
        assert refused["header"] == {"error": "invalid_field"}


def test_demo_names_an_unknown_transport_and_the_installed_ones() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xraptor.cli", "demo", "--transport", "carrier-pigeon"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "xraptor demo: error:" in result.stderr
    assert "carrier-pigeon" in result.stderr and "websockets" in result.stderr, result.stderr
