"""The xraptor 0.4 leftovers: its import paths, its example client, ``is_alive`` on a new antenna."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

import xraptor
from core_support import free_port, wait_for_port
from output_support import Output

#: xraptor 0.4.1's example/client.py (github.com/CenturyBoys/x-raptor), as its users ran
#: it; adapted only in the URL (host and port), see test_04_example_client_chats
EXAMPLE_CLIENT_041 = """\
import json
import threading
from uuid import uuid4

from websockets.sync.client import connect

import xraptor
from xraptor.domain.methods import MethodType


def _sub(request_id, chat_id):
    return xraptor.Request(
        request_id=request_id,
        payload=json.dumps({"chat_id": chat_id}),
        header={},
        route="/chat_messages",
        method=MethodType.SUB,
    ).json()


def _unsub(request_id, chat_id):
    return xraptor.Request(
        request_id=request_id,
        payload=json.dumps({"chat_id": chat_id}),
        header={},
        route="/chat_messages",
        method=MethodType.UNSUB,
    ).json()


def _send(request_id, message, chat_id, client_id):
    return xraptor.Request(
        request_id=request_id,
        payload=json.dumps(
            {"message": message, "chat_id": chat_id, "client_id": client_id}
        ),
        header={},
        route="/send_message_to_chat_room",
        method=MethodType.POST,
    ).json()


def chat():
    client_id = str(uuid4())
    chat_id = input("Chat id ->")
    with connect("ws://localhost:8765") as websocket:
        sub_id = str(uuid4())
        websocket.send(_sub(sub_id, chat_id))

        def chat_message_loop():
            while True:
                message = websocket.recv()
                _data = json.loads(message)
                print(_data)
                if _data["request_id"] == sub_id:
                    _p = json.loads(_data["payload"])
                    if _p["origin"] == client_id:
                        print(f'You: {_p["message"]}')
                    else:
                        print(f'{_p["origin"]}: {_p["message"]}')

        _t = threading.Thread(target=chat_message_loop)
        _t.start()

        print(f"Start chat: {str(chat_id)}")
        while True:
            try:
                text = input()
                if text == "unsub":
                    websocket.send(_unsub(sub_id, chat_id))
                websocket.send(_send(str(uuid4()), text, chat_id, client_id))
            except Exception:  # pylint: disable=W0718
                websocket.send(_unsub(sub_id, chat_id))


if __name__ == "__main__":
    chat()
"""


@pytest.fixture
def demo_port() -> Iterator[int]:
    """``xraptor demo`` (the 0.4 chat routes) on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "xraptor.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=15)


def test_04_example_client_chats(demo_port: int) -> None:
    """0.4's example client, unchanged but for its URL, chats through this server."""
    code = EXAMPLE_CLIENT_041.replace("ws://localhost:8765", f"ws://127.0.0.1:{demo_port}")
    assert code != EXAMPLE_CLIENT_041
    client = subprocess.Popen(
        [sys.executable, "-u", "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    output = Output(client.stdout)
    try:
        client.stdin.write("lobby\nhello from 0.4\n")
        client.stdin.flush()
        output.wait_for("Start chat: lobby")
        output.wait_for("You: hello from 0.4")
        output.wait_for("'payload': '{\"message\": \"Message sent\"}'")

        async def post_from_another_client() -> None:
            async with xraptor.Client(f"ws://127.0.0.1:{demo_port}", timeout=5) as other:
                message = {"chat_id": "lobby", "client_id": "newcomer", "message": "hi 0.4"}
                await other.post("/send_message_to_chat_room", message)

        asyncio.run(post_from_another_client())
        output.wait_for("newcomer: hi 0.4")
        assert "Traceback" not in output.text()
    finally:
        client.kill()
        client.wait()


def test_04_import_paths_are_the_public_names() -> None:
    from xraptor.antenna_implementations import MemoryAntenna as OldMemory
    from xraptor.antenna_implementations.memory import MemoryAntenna as OldMemoryModule
    from xraptor.core.interfaces import Antenna
    from xraptor.domain.methods import MethodType
    from xraptor.domain.request import Request
    from xraptor.domain.response import Response

    assert MethodType is xraptor.MethodType
    assert Request is xraptor.Request and Response is xraptor.Response
    assert Antenna is xraptor.Antenna
    assert OldMemory is OldMemoryModule is xraptor.antennas.MemoryAntenna


def test_04_antenna_from_the_old_interface_is_refused_with_the_migration_notes() -> None:
    from xraptor.core.interfaces import Antenna

    class Old04Antenna(Antenna):  # what 0.4's README told antenna authors to write
        def subscribe(self, antenna_id: str) -> object:  # type: ignore[override]
            return iter(())

        async def stop_listening(self) -> None:
            return None

        async def post(self, antenna_id: str, message: str) -> None:
            return None

        async def is_alive(self, antenna_id: str) -> bool:
            return True

    for attempt in (Old04Antenna, lambda: xraptor.XRaptor().set_antenna(Old04Antenna)):
        with pytest.raises(TypeError, match=r"Migrating a 0\.4 antenna"):
            attempt()


class NeedsConnection(xraptor.Antenna):
    """A third-party style driver whose ``is_alive`` needs the connection ``connect`` opens."""

    name = "needs-connection"

    def __init__(self) -> None:
        super().__init__()
        self.connected = False
        self.listeners: set[str] = set()

    async def connect(self) -> None:
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    async def publish(self, channel: str, message: str) -> None:
        if channel in self.listeners:
            self.deliver(channel, message)

    async def watch(self, channel: str) -> None:
        self.listeners.add(channel)

    async def unwatch(self, channel: str) -> None:
        self.listeners.discard(channel)

    async def is_alive(self, channel: str) -> bool:
        if not self.connected:
            raise xraptor.AntennaError("not connected (start() it first)")
        return channel in self.listeners


async def test_is_alive_starts_an_antenna_not_started_yet() -> None:
    antenna = NeedsConnection()
    before = antenna.state
    assert await antenna.is_alive("room") is False
    assert (before, antenna.state, antenna.connected) == ("new", "up", True)
    async with antenna.subscribe("room"):
        assert await antenna.is_alive("room") is True
    await antenna.close()
    assert antenna.state == "closed" and not antenna.connected


def test_method_type_prints_as_its_wire_name() -> None:
    method = xraptor.MethodType.POST
    assert str(method) == "POST"
    assert f"{method} /chat" == "POST /chat"
    assert f"{xraptor.MethodType.GET:>5}" == "  GET"
    assert "%s" % xraptor.MethodType.SUB == "SUB"  # noqa: UP031  (what logging does)
    assert repr(method) == "<MethodType.POST: 'POST'>"


class ChecksWhileConnecting(NeedsConnection):
    """A driver whose ``connect`` calls ``is_alive`` itself (a liveness check on start)."""

    name = "checks-while-connecting"

    async def connect(self) -> None:
        self.connected = True
        assert await self.is_alive("probe") is False


async def test_is_alive_inside_connect_does_not_deadlock() -> None:
    antenna = ChecksWhileConnecting()
    await asyncio.wait_for(antenna.start(), 2)
    assert antenna.state == "up"
    await antenna.close()
