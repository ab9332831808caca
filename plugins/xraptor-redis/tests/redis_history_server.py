"""A server process with rooms that keep history on Redis, for the recovery tests:
``python redis_history_server.py REDIS_URL``; binds a free port and prints it on its
first line.

``SUB /room`` with payload ``{"rooms": [...]}`` joins those rooms; ``POST /say`` with
``{"room": ..., "text": ...}`` posts the text to the room. Rooms ``chat:*`` keep
history (10,000 messages).
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from xraptor import Broadcast, Request, Response, XRaptor
from xraptor.testing import serve_until_terminated


def history_app(url: str) -> XRaptor:
    """The app: its routes, and rooms ``chat:*`` with history, on Redis at ``url``."""
    app = XRaptor(
        "127.0.0.1",
        0,
        antenna="redis",
        antenna_options={"url": url, "publish_timeout": 1.0, "reconnect_max_delay": 0.3},
        ping_interval=None,
    )
    app.configure_rooms(r"chat:", history_size=10_000)

    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        for room in orjson.loads(request.payload)["rooms"]:
            Broadcast.get(room, app=app).add_member(request.request_id)

    @app.register("/say").as_post
    async def say(request: Request) -> Response:
        data = orjson.loads(request.payload)
        await Broadcast.get(data["room"], app=app).post(data["text"])
        return Response.create(request.request_id, {}, "ok")

    return app


async def main(url: str) -> None:
    server = history_app(url)
    await serve_until_terminated(server)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
