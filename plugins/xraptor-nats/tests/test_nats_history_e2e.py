"""End to end: rooms with history across two xraptor server processes sharing a
private ``nats-server -js``, driven by the xraptor client.

Pushes of a room with history carry ``{"room", "position"}``; a SUB with ``since``
on the *other* process recovers what the room published after the position, then
gets the live messages; a position of an unknown epoch gets the ``unrecovered``
notice; a room without history pushes as before. A kill -9 and restart of
nats-server (file storage) keeps the rooms' history and epoch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from nats_support import NatsServer, two_processes, wait_antenna_state

from xraptor import Client, Response
from xraptor.testing import ServerProcess

pytest.importorskip("xraptor.demo", reason="the core server's chat demo is not there yet")

HISTORY = "50"


@pytest.fixture
def servers(private_jetstream: NatsServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with two_processes(private_jetstream.url, HISTORY) as both:
        yield both


async def post(client: Client, room: str, message: str) -> None:
    answer = await client.post(
        "/send_message_to_chat_room", {"chat_id": room, "client_id": "bob", "message": message}
    )
    assert "Message sent" in answer.payload


async def next_push(stream: object) -> Response:
    async with asyncio.timeout(10):
        push: Response = await anext(stream)  # type: ignore[call-overload]
        return push


async def next_positioned(stream: object) -> Response:
    """The next push that carries a position (notices such as a gap are skipped)."""
    while True:
        push = await next_push(stream)
        if "position" in push.header:
            return push


async def posted_and_pushed(
    poster: Client, stream: object, room: str, count: int
) -> list[Response]:
    """Post ``m0``... ``m<count - 1>`` to ``room``; the pushes ``stream`` gets for them."""
    for i in range(count):
        await post(poster, room, f"m{i}")
    return [await next_positioned(stream) for _ in range(count)]


def text(push: Response) -> str:
    return str(json.loads(push.payload)["message"])


async def test_positions_and_recovery_across_two_processes(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    one, two = servers
    room = "h-room"
    async with Client(f"ws://127.0.0.1:{one.port}") as a, Client(f"ws://127.0.0.1:{two.port}") as b:
        async with a.subscribe("/chat_messages", {"chat_id": room}) as stream:
            pushes = await posted_and_pushed(b, stream, room, 5)
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


async def test_history_outlives_a_restart_of_nats(
    private_jetstream: NatsServer, servers: tuple[ServerProcess, ServerProcess]
) -> None:
    """kill -9 of nats-server (file storage) and a restart: the room's stream, its epoch
    and its messages are still there; live pushes carry positions of the same epoch, and
    a position from before the outage is recovered on the other process."""
    one, two = servers
    room = "h-restart"
    async with Client(f"ws://127.0.0.1:{one.port}") as a, Client(f"ws://127.0.0.1:{two.port}") as b:
        async with a.subscribe("/chat_messages", {"chat_id": room}) as stream:
            before = await posted_and_pushed(b, stream, room, 3)
            private_jetstream.kill()
            await wait_antenna_state(servers, "down", 10)
            private_jetstream.restart()
            await wait_antenna_state(servers, "up", 15)
            await post(b, room, "after")
            after = await next_positioned(stream)
        epoch, offset = before[-1].header["position"].rsplit(":", 1)
        assert text(after) == "after"
        assert after.header["position"].rsplit(":", 1)[0] == epoch
        assert int(after.header["position"].rsplit(":", 1)[1]) > int(offset)
        since = {room: before[0].header["position"]}
        async with b.subscribe("/chat_messages", {"chat_id": room}, since=since) as again:
            recovered = [await next_positioned(again) for _ in range(3)]
        assert [text(p) for p in recovered] == ["m1", "m2", "after"]
