"""End to end: rooms with history across two xraptor server processes sharing a
private ``nats-server -js``, driven by the xraptor client.

Pushes of a room with history carry ``{"room", "position"}``; a SUB with ``since``
on the *other* process recovers what the room published after the position, then
gets the live messages; a position of an unknown epoch gets the ``unrecovered``
notice; a room without history pushes as before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats_support import NatsServer, Process, two_processes
from test_nats_history import jetstream_server

from xraptor import Client, Response

pytest.importorskip("xraptor.demo", reason="the core server's chat demo is not there yet")

HISTORY = "50"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    nats_server: NatsServer | None = jetstream_server(tmp_path / "store")
    if nats_server is None:
        pytest.skip("needs the nats-server binary (a private JetStream server)")
    nats_server.start()
    try:
        with two_processes(nats_server.url, HISTORY) as both:
            yield both
    finally:
        nats_server.stop()


async def post(client: Client, room: str, message: str) -> None:
    answer = await client.post(
        "/send_message_to_chat_room", {"chat_id": room, "client_id": "bob", "message": message}
    )
    assert "Message sent" in answer.payload


async def next_push(stream: object) -> Response:
    async with asyncio.timeout(10):
        push: Response = await anext(stream)  # type: ignore[call-overload]
        return push


def text(push: Response) -> str:
    return str(json.loads(push.payload)["message"])


async def test_positions_and_recovery_across_two_processes(
    servers: tuple[Process, Process],
) -> None:
    one, two = servers
    room = "h-room"
    async with Client(f"ws://127.0.0.1:{one.port}") as a, Client(f"ws://127.0.0.1:{two.port}") as b:
        async with a.subscribe("/chat_messages", {"chat_id": room}) as stream:
            for i in range(5):
                await post(b, room, f"m{i}")
            pushes = [await next_push(stream) for _ in range(5)]
        assert [text(push) for push in pushes] == [f"m{i}" for i in range(5)]
        assert all(push.header["room"] == room for push in pushes)
        positions = [push.header["position"] for push in pushes]
        epochs = {position.rsplit(":", 1)[0] for position in positions}
        offsets = [int(position.rsplit(":", 1)[1]) for position in positions]
        assert len(epochs) == 1 and offsets == sorted(set(offsets))

        # a client of the other process resumes from m1: m2..m4, then live messages
        async with b.subscribe(
            "/chat_messages", {"chat_id": room}, since={room: positions[1]}
        ) as again:
            recovered = [await next_push(again) for _ in range(3)]
            assert [(text(p), p.header["position"]) for p in recovered] == [
                (f"m{i}", positions[i]) for i in range(2, 5)
            ]
            await post(a, room, "live")
            live = await next_push(again)
            assert (
                text(live) == "live" and int(live.header["position"].rsplit(":")[1]) > offsets[-1]
            )

        # a position of an epoch this room never had: one notice, then live messages
        async with b.subscribe(
            "/chat_messages", {"chat_id": room}, since={room: f"x{epochs.pop()}:{offsets[0]}"}
        ) as lost:
            notice = await next_push(lost)
            assert notice.header == {"notice": "unrecovered", "room": room}
            await post(a, room, "after the notice")
            assert text(await next_push(lost)) == "after the notice"

        # a room without history pushes as it always did: no position
        async with a.subscribe("/chat_messages", {"chat_id": "plain"}) as plain:
            await post(b, "plain", "no history")
            push = await next_push(plain)
            assert text(push) == "no history" and "position" not in push.header
