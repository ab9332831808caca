"""Pushes waiting for the end of the loop iteration never follow a close frame, also
one picows sends by itself (here: 1009 for a frame over ``max_size``)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from picows_support import CLOSE, TEXT, AppFactory, RawSocket

from xraptor import Broadcast, Request, XRaptor


def _room(app: XRaptor) -> None:
    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        Broadcast.get("lobby", app=app).add_member(request.request_id)


async def test_no_push_after_picows_own_close_frame(make_app: AppFactory) -> None:
    app = await make_app(_room, max_size=1000)
    raw = await RawSocket.connect(app.port)
    body = {"request_id": "m", "payload": "", "header": {}, "route": "/room", "method": "SUB"}
    raw.send_frame(TEXT, json.dumps(body).encode())
    await Broadcast.settle(app)

    async def post_pairs() -> None:  # two pushes per iteration: a corked pair each time
        n = 0
        while True:
            await app.antenna.post("lobby", f"a{n}")
            await app.antenna.post("lobby", f"b{n}")
            n += 1
            await asyncio.sleep(0)

    poster = asyncio.get_running_loop().create_task(post_pairs())
    try:
        assert (await raw.recv_frame())[0] == TEXT  # the pushes flow
        raw.send_frame(TEXT, b"x" * 5000)  # over max_size: picows answers 1009 itself
        while True:
            opcode, payload, _ = await raw.recv_frame()
            if opcode == CLOSE:
                break
        assert int.from_bytes(payload[:2], "big") == 1009
        after: list[int] = []
        with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
            while True:
                after.append((await raw.recv_frame(timeout=0.5))[0])
        assert after == []  # nothing after the close frame, until TCP closed
    finally:
        poster.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poster
        raw.close()
