"""End to end: two xraptor server processes share a private nats-server.

A chat room spans both processes; a kill -9 of NATS gives both streams a gap
notice and the room works again once NATS is back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import nats
import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats_support import two_processes, wait_antenna_state
from websockets.asyncio.client import ClientConnection, connect

from xraptor.testing import ServerProcess
from xraptor_nats.forward import route_subject

if TYPE_CHECKING:
    from nats_support import NatsServer

pytest.importorskip("xraptor.demo", reason="the core server's chat demo is not there yet")


@pytest.fixture
def servers(private_nats: NatsServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with two_processes(private_nats.url) as both:
        yield both


class Ws:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []

    async def send(self, request_id: str, route: str, method: str, payload: Any) -> None:
        await self.ws.send(
            json.dumps(
                {
                    "request_id": request_id,
                    "payload": json.dumps(payload),
                    "header": {},
                    "route": route,
                    "method": method,
                }
            )
        )

    async def wait_for(
        self, request_id: str, pred: Any = None, wait: float = 5.0
    ) -> dict[str, Any]:
        """The first message with this request_id (and matching ``pred``), kept or new."""
        for message in self.inbox:
            if message["request_id"] == request_id and (pred is None or pred(message)):
                self.inbox.remove(message)
                return message
        async with asyncio.timeout(wait):
            while True:
                message = json.loads(await self.ws.recv())
                if message["request_id"] == request_id and (pred is None or pred(message)):
                    return message
                self.inbox.append(message)

    async def sync(self) -> None:
        """Once this answers, the server has handled every earlier request."""
        rid = f"sync-{time.monotonic_ns()}"
        await self.send(rid, "/no-such-route", "GET", "")
        await self.wait_for(rid)


@pytest_asyncio.fixture
async def clients(servers: tuple[ServerProcess, ServerProcess]) -> AsyncIterator[tuple[Ws, Ws]]:
    one, two = servers
    async with (
        connect(f"ws://127.0.0.1:{one.port}") as a,
        connect(f"ws://127.0.0.1:{two.port}") as b,
    ):
        yield Ws(a), Ws(b)


def _chat(message: dict[str, Any]) -> bool:
    return "origin" in message.get("payload", "")


async def _join(a: Ws, b: Ws, room: str) -> None:
    await a.send("a-sub", "/chat_messages", "SUB", {"chat_id": room})
    await b.send("b-sub", "/chat_messages", "SUB", {"chat_id": room})
    await a.sync()
    await b.sync()


async def test_room_spans_two_server_processes(
    servers: tuple[ServerProcess, ServerProcess], clients: tuple[Ws, Ws]
) -> None:
    a, b = clients
    assert servers[0].health()["antenna"]["name"] == "nats"
    await _join(a, b, "room-1")
    await b.send(
        "b-post",
        "/send_message_to_chat_room",
        "POST",
        {"chat_id": "room-1", "client_id": "bob", "message": "hi from 2"},
    )
    assert "Message sent" in (await b.wait_for("b-post"))["payload"]
    for ws in (a, b):
        push = await ws.wait_for(f"{'a' if ws is a else 'b'}-sub", _chat)
        assert json.loads(push["payload"]) == {"origin": "bob", "message": "hi from 2"}
    await a.send(
        "a-post",
        "/send_message_to_chat_room",
        "POST",
        {"chat_id": "room-1", "client_id": "alice", "message": "olá from 1"},
    )
    for ws, rid in ((a, "a-sub"), (b, "b-sub")):
        push = await ws.wait_for(rid, _chat)
        assert json.loads(push["payload"]) == {"origin": "alice", "message": "olá from 1"}
    # a room of another name is not crossed
    await a.send(
        "a-other",
        "/send_message_to_chat_room",
        "POST",
        {"chat_id": "room-1.>", "client_id": "eve", "message": "leak?"},
    )
    await a.wait_for("a-other")
    await b.sync()
    assert not [m for m in a.inbox + b.inbox if "leak?" in m.get("payload", "")]


async def test_nats_outage_gives_gap_and_recovers(
    private_nats: NatsServer, servers: tuple[ServerProcess, ServerProcess], clients: tuple[Ws, Ws]
) -> None:
    a, b = clients
    await _join(a, b, "room-2")
    private_nats.kill()
    await wait_antenna_state(servers, "down", 10)
    private_nats.restart()
    for ws, rid in ((a, "a-sub"), (b, "b-sub")):
        gap = await ws.wait_for(rid, lambda m: "gap" in json.dumps(m.get("header", {})), 15)
        assert gap["method"] == "SUB"
    assert all(s.health()["antenna"]["state"] == "up" for s in servers)
    assert all(s.health()["status"] == "ok" for s in servers)
    await a.send(
        "a-post",
        "/send_message_to_chat_room",
        "POST",
        {"chat_id": "room-2", "client_id": "alice", "message": "back"},
    )
    for ws, rid in ((a, "a-sub"), (b, "b-sub")):
        assert json.loads((await ws.wait_for(rid, _chat))["payload"])["message"] == "back"


async def test_forwarded_route_through_a_server_process(
    private_nats: NatsServer, clients: tuple[Ws, Ws]
) -> None:
    a, _ = clients
    service = await nats.connect(private_nats.url)

    async def respond(msg: Msg) -> None:
        request = json.loads(msg.data)
        await msg.respond(f"served {request['route']} {request['method']}".encode())

    await service.subscribe(route_subject("/svc/hello"), cb=respond)
    await service.flush()
    await service.flush()  # nats-py's flush PING can overtake the SUB
    await a.send("f-1", "/svc/hello", "GET", "x")
    assert (await a.wait_for("f-1"))["payload"] == "served /svc/hello GET"
    await a.send("f-2", "/svc/nobody", "POST", "x")
    reply = await a.wait_for("f-2")
    assert reply["header"] == {"error": "no_responders"}
    await service.close()
