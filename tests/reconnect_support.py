"""The reconnecting clients' acceptance scenario (issue 12 part 4), shared by the Python
client's tests and the browser client's.

A publisher posts :data:`TOTAL` messages to a room with history at a steady rate
while the subscriber's connection is cut twice: once by the server (its
``connection.abort()``), once by a :class:`~tcp_proxy.TcpProxy` between the subscriber
and the server that drops both sides. The subscriber must see every message once, in
order.

The backend is a parameter: :data:`BACKENDS` maps a name to a function of the test's
``request`` returning the ``antenna`` argument of :class:`~xraptor.XRaptor` (a URL:
each app makes its own antenna, as separate processes would). Apps on one backend
share their rooms' history: on the memory antenna, every app of the process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from tcp_proxy import TcpProxy

from xraptor import (
    Broadcast,
    Client,
    Connection,
    Handshake,
    Reconnect,
    Refuse,
    Request,
    Response,
    XRaptor,
    error_response,
)
from xraptor.history import Position

#: messages the publisher posts
TOTAL = 1000
#: seconds between two posts (1,000 in about 2.5 s)
INTERVAL = 0.0025
#: the messages after which the server aborts the subscriber's connection, then the
#: proxy drops it
SERVER_ABORT_AT, PROXY_DROP_AT = 300, 650
#: quick reconnections for tests
FAST = Reconnect(initial_delay=0.02, max_delay=0.1)
#: the room pattern with history, and the room
PATTERN, ROOM = r"acceptance:", "acceptance:room"
#: rooms that keep only their last 3 messages, and one of them
SMALL_PATTERN, SMALL_ROOM, SMALL_HISTORY = r"small:", "small:room", 3

#: backend name -> the ``antenna`` argument of the apps, from the test's fixtures. A
#: backend whose history is implemented runs the scenarios once its name is added to
#: a test's parameters (its fixture must exist where that test runs: ``redis_url`` is
#: a private redis-server in tests/e2e/conftest.py)
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], str]] = {
    "memory": lambda request: "memory://",
    "redis": lambda request: str(request.getfixturevalue("redis_url")),
    "nats": lambda request: str(request.getfixturevalue("nats_url")),
}


@dataclass
class ChatApp:
    """An app with a history room: SUB ``/room`` joins ``{"room": ...}``, POST ``/say``
    posts ``{"room", "text"}``; what the tests look at and change is kept here."""

    app: XRaptor
    #: the connections that subscribed (for the server's cut)
    subscribers: list[Connection] = field(default_factory=list)
    #: each SUB /room: its request id and header "since"
    subs: list[tuple[str, object]] = field(default_factory=list)
    #: SUB /picky refuses while this is true
    refusing: bool = False
    #: the tokens the connect guard accepted; it refuses one it saw before, and every
    #: handshake while ``banned`` (403)
    tokens: list[str | None] = field(default_factory=list)
    check_tokens: bool = False
    banned: bool = False
    #: HTTP statuses to refuse the next handshakes with, one each
    refuse_next: list[int] = field(default_factory=list)
    #: the request ids GET /slow was called with
    slow_calls: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.app.port}"

    def abort_subscribers(self) -> int:
        """Drop every subscriber's connection from the server's side; how many were open."""
        open_ones = [c for c in self.subscribers if c.is_open()]
        for connection in open_ones:
            connection.abort()
        return len(open_ones)


def chat_app(antenna: str, **options: Any) -> ChatApp:
    app = XRaptor("127.0.0.1", 0, antenna=antenna, **options)
    app.configure_rooms(PATTERN, history_size=10 * TOTAL)
    app.configure_rooms(SMALL_PATTERN, history_size=SMALL_HISTORY)
    chat = ChatApp(app)

    @app.on_connect
    async def guard(handshake: Handshake) -> object:
        if chat.banned:
            raise Refuse(403, "banned")
        if chat.refuse_next:
            raise Refuse(chat.refuse_next.pop(0), "not now")
        if chat.check_tokens:
            if handshake.token in chat.tokens:
                raise Refuse(401, "this token was used already")
            chat.tokens.append(handshake.token)
        return None

    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        chat.subs.append((request.request_id, request.header.get("since")))
        data = json.loads(request.payload)
        Broadcast.get(data["room"], app=app).add_member(request.request_id)
        assert request.connection is not None
        chat.subscribers.append(request.connection)
        if data.get("linger"):  # a handler that takes its time: the SUB is in flight
            await asyncio.sleep(data["linger"])

    @app.register("/picky").as_sub
    async def picky(request: Request) -> Response | None:
        if chat.refusing:
            return error_response("forbidden", "not any more", request)
        return None

    @app.register("/say").as_post
    async def say(request: Request) -> Response:
        data = json.loads(request.payload)
        await Broadcast.get(data["room"], app=app).post(data["text"])
        return Response.create(request.request_id, {}, "ok")

    @app.register("/slow").as_get
    async def slow(request: Request) -> Response:
        chat.slow_calls.append(request.request_id)
        await asyncio.sleep(1)
        return Response.create(request.request_id, {}, "late")

    return chat


@contextlib.asynccontextmanager
async def started(chat: ChatApp) -> AsyncIterator[ChatApp]:
    await chat.app.start()
    try:
        yield chat
    finally:
        await chat.app.close()


async def publish_steadily(
    publisher: Client, cuts: dict[int, Callable[[], Awaitable[None] | None]]
) -> None:
    """Post ``m0`` ... ``m999`` to the room on a fixed schedule; after message ``n``
    run ``cuts[n]`` (the faults), without holding the schedule back."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(TOTAL):
        await publisher.post("/say", {"room": ROOM, "text": f"m{n}"})
        cut = cuts.get(n)
        if cut is not None:
            result = cut()
            if result is not None:
                await result
        delay = start + (n + 1) * INTERVAL - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


def expected() -> list[str]:
    return [f"m{n}" for n in range(TOTAL)]


async def every_message_once_across_two_cuts(
    chat: ChatApp, proxy: TcpProxy, publisher_url: str, *, reconnect_to: int | None = None
) -> list[Response]:
    """The acceptance scenario: a client through ``proxy`` (to ``chat``) subscribes to
    the room while a client of ``publisher_url`` posts :data:`TOTAL` messages; ``chat``
    aborts the subscriber's connection, later the proxy drops it (and, with
    ``reconnect_to``, sends the reconnection to that port: another server on the same
    backend). Asserts that the subscriber reconnected twice and saw each message once,
    in order, with increasing positions; returns what it received."""
    async with (
        Client(publisher_url) as publisher,
        Client(f"ws://127.0.0.1:{proxy.port}", reconnect=FAST) as subscriber,
        subscriber.subscribe("/room", {"room": ROOM}) as stream,
    ):

        def drop() -> None:
            if reconnect_to is not None:
                proxy.target = ("127.0.0.1", reconnect_to)
            assert proxy.drop() == 1

        def abort() -> None:
            assert chat.abort_subscribers() == 1

        posting = asyncio.create_task(
            publish_steadily(publisher, {SERVER_ABORT_AT: abort, PROXY_DROP_AT: drop})
        )
        received: list[Response] = []
        async with asyncio.timeout(30):
            async for push in stream:
                received.append(push)
                if push.payload == f"m{TOTAL - 1}":
                    break
        await posting
        assert subscriber.reconnects == 2
        assert [push.payload for push in received] == expected()
        offsets = [Position.parse(push.header["position"]).offset for push in received]
        assert offsets == sorted(set(offsets))
        assert stream.positions == {ROOM: received[-1].header["position"]}
    return received
