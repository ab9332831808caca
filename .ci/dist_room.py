"""The room check of ``nox -s dist`` (.ci/dist_check.py), run inside a venv that installed
the built wheels: the app and the client.

* ``xraptor run dist_room:app --port P``: an app that selects the Redis antenna by name
  (``antenna="redis"``, URL from ``DIST_ROOM_REDIS``), with a room ``lobby``: a SUB on
  ``/room`` joins it, a POST on ``/say`` posts its payload to it.
* ``python dist_room.py WS_URL_A WS_URL_B``: one client on each server joins the room and
  posts once; each must receive both messages, its own and the other server's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import xraptor

ROOM = "lobby"
TIMEOUT = 15.0

app = xraptor.XRaptor(
    "127.0.0.1", 0, antenna="redis", antenna_options={"url": os.environ["DIST_ROOM_REDIS"]}
)


@app.register("/room").as_sub
async def join(request: xraptor.Request) -> None:
    await xraptor.Broadcast.get(ROOM, app=app).join(request.request_id)


@app.register("/room").as_unsub
async def leave(request: xraptor.Request) -> xraptor.Response:
    xraptor.Broadcast.get(ROOM, app=app).remove_member(request.request_id)
    return xraptor.Response.create(request.request_id, {}, '{"left": true}')


@app.register("/say").as_post
async def say(request: xraptor.Request) -> xraptor.Response:
    await xraptor.Broadcast.get(ROOM, app=app).post(request.payload)
    return xraptor.Response.create(request.request_id, {}, '{"sent": true}')


async def _senders(stream: AsyncIterator[xraptor.Response], expected: set[str]) -> set[str]:
    """Read ``stream`` until a message from each of ``expected`` has arrived."""
    seen: set[str] = set()
    async for push in stream:
        if push.header.get("notice") == "gap":
            continue
        seen.add(json.loads(push.payload)["from"])
        if seen >= expected:
            break
    return seen


async def converse(url_a: str, url_b: str) -> None:
    """A client on each server; both join the room, each says one thing, both hear both."""
    async with (
        xraptor.Client(url_a, timeout=TIMEOUT) as a,
        xraptor.Client(url_b, timeout=TIMEOUT) as b,
        a.subscribe("/room") as heard_by_a,
        b.subscribe("/room") as heard_by_b,
    ):
        await a.post("/say", {"from": "a", "text": "hello from the first process"})
        await b.post("/say", {"from": "b", "text": "hello from the second process"})
        everyone = {"a", "b"}
        for who, stream in (("a", heard_by_a), ("b", heard_by_b)):
            seen = await asyncio.wait_for(_senders(stream, everyone), TIMEOUT)
            if seen != everyone:
                raise SystemExit(f"client {who} heard {sorted(seen)}, expected {sorted(everyone)}")
    print(f"room {ROOM!r}: each client heard both ({url_a}, {url_b})")


if __name__ == "__main__":
    asyncio.run(converse(sys.argv[1], sys.argv[2]))
