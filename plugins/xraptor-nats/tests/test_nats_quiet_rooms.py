"""A quiet room (members joined, nothing delivered yet) on NATS: it starts from its
history's newest message (``NatsAntenna.newest_position``), so when its process loses
its connection while others publish, the members receive what was stored meanwhile and
no ``unrecovered`` notice; with a private ``nats-server -js`` behind a cuttable proxy.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
from nats_support import NatsServer
from test_nats_history import CuttableProxy, wait_state

from xraptor import Broadcast, Client, Request, Response, XRaptor
from xraptor.history import HistoryPolicy
from xraptor_nats.antenna import NatsAntenna

POLICY = HistoryPolicy(size=500)


def rooms_app(antenna: NatsAntenna) -> XRaptor:
    """``SUB /room`` with ``{"rooms": [...]}`` joins them; rooms ``chat:*`` keep history."""
    app = XRaptor("127.0.0.1", 0, antenna=antenna, ping_interval=None)
    app.configure_rooms(r"chat:", history_size=POLICY.size)

    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        for room in orjson.loads(request.payload)["rooms"]:
            Broadcast.get(room, app=app).add_member(request.request_id)

    return app


async def take(stream: object, count: int) -> list[Response]:
    async with asyncio.timeout(10):
        return [await anext(stream) for _ in range(count)]  # type: ignore[call-overload]


async def silent(stream: object, seconds: float = 0.5) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await anext(stream)  # type: ignore[call-overload]
    except TimeoutError:
        return True
    return False


async def test_a_quiet_room_delivers_what_was_stored_while_its_process_was_away(
    private_jetstream: NatsServer,
) -> None:
    room = f"chat:{uuid.uuid4().hex[:10]}"
    proxy = CuttableProxy(private_jetstream.port)
    url = await proxy.start()
    antenna = NatsAntenna(servers=url, reconnect_time_wait=0.1)
    app = rooms_app(antenna)
    try:
        async with NatsAntenna(servers=private_jetstream.url) as publisher:
            publisher.set_history(lambda _: POLICY)
            await publisher.publish_with_history(room, "before the room opened", POLICY)
            await app.start()
            async with (
                Client(f"ws://127.0.0.1:{app.port}") as member,
                member.subscribe("/room", {"rooms": [room]}) as stream,
            ):
                proxy.cut()
                await wait_state(antenna, "down")
                for i in range(5):
                    await publisher.publish_with_history(room, f"m{i}", POLICY)
                proxy.refusing = False
                await wait_state(antenna, "up")
                pushes = await take(stream, 5)
                await publisher.publish_with_history(room, "after", POLICY)
                pushes += await take(stream, 1)
                assert await silent(stream)
    finally:
        await app.close()
        await proxy.close()
    assert [push.header.get("notice") for push in pushes] == [None] * 6
    assert [push.payload for push in pushes] == [f"m{i}" for i in range(5)] + ["after"]
