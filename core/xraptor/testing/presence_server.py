"""A server process for presence tests across processes.

``python -m xraptor.testing.presence_server ANTENNA_URL [OPTIONS_JSON]`` serves
:func:`presence_app` on a free loopback port, prints the port on its first line,
and stops on SIGTERM. ``OPTIONS_JSON`` is the antenna's options (e.g.
``{"presence_ttl": 1.5}``). The plugins' end-to-end tests run it, one process per
server (:class:`PresenceProcess`), through :func:`check_presence_across_processes`,
which kills one with SIGKILL to see its members expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from ..broadcast import Broadcast
from ..client import Client
from ..client_stream import Stream
from ..protocol import Request, Response
from ..server import XRaptor
from .conformance import eventually
from .processes import ServerProcess, serve_until_terminated

#: every room keeps presence; those whose id starts with ``notices:`` announce too
ROOMS: tuple[tuple[str, dict[str, Any]], ...] = (
    (r".", {"presence": True}),
    (r"notices:", {"presence": True, "join_leave": True}),
)


def presence_app(
    antenna: object, *, rooms: Iterable[tuple[str, dict[str, Any]]] = ROOMS, **options: Any
) -> XRaptor:
    """An app with ``rooms`` (``configure_rooms`` patterns and keywords) and ``options``
    for its antenna. ``SUB /room`` with ``{"room": id}`` joins one (UNSUB leaves it);
    ``GET /who`` with the room's id as payload answers its presence (JSON).
    """
    app = XRaptor("127.0.0.1", 0, antenna=antenna, antenna_options=options, ping_interval=None)
    for pattern, settings in rooms:
        app.configure_rooms(pattern, **settings)

    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        Broadcast.get(json.loads(request.payload)["room"], app=app).add_member(request.request_id)

    @app.register("/room").as_unsub
    async def leave(request: Request) -> None:
        room = Broadcast.get(json.loads(request.payload)["room"], app=app)
        room.remove_member(request.request_id)

    @app.register("/who").as_get
    async def who(request: Request) -> Response:
        members = await Broadcast.get(request.payload, app=app).presence()
        return Response.create(request.request_id, {}, orjson.dumps(members).decode())

    return app


class PresenceProcess(ServerProcess):
    """One ``presence_server`` process on ``antenna_url`` (a context manager).

    :param options: the antenna's options
    """

    def __init__(self, antenna_url: str, options: dict[str, Any]) -> None:
        super().__init__([sys.executable, "-m", __name__, antenna_url, json.dumps(options)])


async def who(client: Client, room: str) -> dict[str, Any]:
    """The presence of ``room`` as the server ``client`` is connected to answers it."""
    members: dict[str, Any] = orjson.loads((await client.get("/who", room)).payload)
    return members


async def next_notice(stream: Stream) -> tuple[str, dict[str, Any]]:
    """The next push of ``stream``, which must be a join or leave notice: (kind, payload)."""
    push = await asyncio.wait_for(anext(stream), 5)
    kind = push.header.get("notice")
    assert kind in ("join", "leave") and push.header.get("room"), f"not a notice: {push!r}"
    payload: dict[str, Any] = orjson.loads(push.payload)
    return kind, payload


async def check_presence_across_processes(
    first: PresenceProcess, second: PresenceProcess, *, ttl: float
) -> tuple[float, float]:
    """Presence across two processes of one backend, join and leave notices between
    them, a disconnect, and ``second`` killed with SIGKILL: its member disappears
    within ``ttl`` and its leave is announced within a third of it more (plus a little
    for polling and a loaded machine). Returns how long each took, in seconds.
    """
    room = f"notices:{uuid.uuid4().hex[:12]}"

    async def infos(client: Client) -> list[Any]:
        return sorted((info["who"] for info in (await who(client, room)).values()), key=str)

    async with (
        Client(first.url) as a,
        Client(second.url) as b,
        a.subscribe("/room", {"room": room}, {"presence": {"who": "a"}}) as alice,
    ):
        assert (await next_notice(alice))[0] == "join"  # its own
        async with b.subscribe("/room", {"room": room}, {"presence": {"who": "b"}}) as bob:
            kind, joined = await next_notice(alice)  # from the other process
            assert kind == "join" and joined["info"] == {"who": "b"}
            assert joined["member"].endswith(f":{bob.request_id}")
            assert await infos(a) == await infos(b) == ["a", "b"]
        assert await next_notice(alice) == ("leave", joined)
        assert await eventually(lambda: _listed(infos, b, ["a"]))
        # a room with presence and without join_leave: listed everywhere, no notices
        quiet = f"quiet:{room}"
        async with (
            a.subscribe("/room", {"room": quiet}, {"presence": {"who": "a"}}) as listener,
            b.subscribe("/room", {"room": quiet}, {"presence": {"who": "b"}}),
        ):
            for client in (a, b):
                assert sorted(i["who"] for i in (await who(client, quiet)).values()) == ["a", "b"]
            with contextlib.suppress(TimeoutError):
                push = await asyncio.wait_for(anext(listener), 0.3)
                raise AssertionError(f"a room without join_leave pushed {push!r}")
        # a disconnect (no UNSUB) removes the member too
        async with Client(first.url) as carol:
            await carol.subscribe("/room", {"room": room}, {"presence": {"who": "c"}}).__aenter__()
            assert (await next_notice(alice))[1]["info"] == {"who": "c"}
        kind, left = await next_notice(alice)
        assert kind == "leave" and left["info"] == {"who": "c"}
        assert await eventually(lambda: _listed(infos, b, ["a"]))
        # a process killed with SIGKILL: nobody removes its member; it expires, and the
        # first process announces its leave
        async with Client(second.url) as dan:
            await dan.subscribe("/room", {"room": room}, {"presence": {"who": "d"}}).__aenter__()
            assert (await next_notice(alice))[1]["info"] == {"who": "d"}
            assert await infos(a) == ["a", "d"]
            second.kill()
            killed = time.monotonic()
            assert await eventually(lambda: _listed(infos, a, ["a"]), timeout=ttl + 3)
            gone_after = time.monotonic() - killed
            # the first process takes it out within a third of the ttl more: its leave
            kind, left = await asyncio.wait_for(next_notice(alice), ttl + 3)
            announced_after = time.monotonic() - killed
            assert kind == "leave" and left["info"] == {"who": "d"}
        assert gone_after <= ttl + 1.0, f"a killed process's member stayed {gone_after:.2f} s"
        assert announced_after <= ttl * 4 / 3 + 1.0, f"its leave took {announced_after:.2f} s"
        assert await infos(a) == ["a"]
    return gone_after, announced_after


async def _listed(infos: Any, client: Client, expected: list[Any]) -> bool:
    return bool(await infos(client) == expected)


if __name__ == "__main__":
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    asyncio.run(serve_until_terminated(presence_app(sys.argv[1], **options)))
