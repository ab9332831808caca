"""Members of the chat demo's rooms (:mod:`xraptor.demo`'s routes), for end-to-end tests of
a room that spans server processes.

* :class:`ChatMember`: a stream on a room that records every message and gap notice
  it gets (``async with ChatMember(client, room) as member: ...``);
* :func:`send`: post a message to a room;
* :func:`settle`: post probes until every member gets them, so that the room is known
  to be live in every process before a test counts messages; :func:`members_on_both`:
  a member on each of two servers, the room settled;
* two scenarios on two server processes (:class:`~xraptor.testing.ServerProcess`)
  sharing a backend: :func:`check_room_spans_processes` (each message exactly once,
  in order) and :func:`check_outage_and_recovery` (gap notices, then the room works
  again).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import orjson

from ..client import Client
from ..protocol import Response
from .conformance import until
from .processes import ServerProcess

__all__ = [
    "JOIN",
    "SEND",
    "ChatMember",
    "check_outage_and_recovery",
    "check_room_spans_processes",
    "members_on_both",
    "send",
    "settle",
]

#: the demo's routes: SUB to join a room, POST to send to it
JOIN, SEND = "/chat_messages", "/send_message_to_chat_room"


class ChatMember:
    """A stream on the chat room ``room`` of ``client``'s server (:attr:`client`) that
    records what it gets: :attr:`messages` (``{"origin", "message"}``) and :attr:`gaps`
    (gap notices)."""

    def __init__(self, client: Client, room: str) -> None:
        self.client = client
        self.stream = client.subscribe(JOIN, {"chat_id": room})
        self.messages: list[dict[str, Any]] = []
        self.gaps = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.stream.__aenter__()
        self._task = asyncio.ensure_future(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.stream.close()

    async def _collect(self) -> None:
        async for response in self.stream:
            if response.header.get("notice") == "gap":
                self.gaps += 1
                continue
            self.messages.append(orjson.loads(response.payload))

    def texts(self, origin: str | None = None) -> list[str]:
        """The texts received (from ``origin`` only, if given), in the order received."""
        return [m["message"] for m in self.messages if origin is None or m["origin"] == origin]


async def send(client: Client, room: str, origin: str, text: str, who: str = "") -> Response:
    """Post ``text`` to ``room`` as ``origin``, with the header ``client``: ``who`` or
    ``origin`` (what a rate limit keyed on ``header:client`` counts)."""
    return await client.post(
        SEND, {"chat_id": room, "client_id": origin, "message": text}, {"client": who or origin}
    )


async def settle(members: list[ChatMember], sender: Client, room: str) -> None:
    """Post probes (origin ``"probe"``, text and ``client`` header ``probe-N``) from
    ``sender`` until every member got one: the room is live in every process.

    :raises AssertionError: not within 100 probes, 0.2 s apart
    """
    for attempt in range(100):
        await send(sender, room, "probe", f"probe-{attempt}", who=f"probe-{attempt}")
        if await until(lambda: all(m.texts("probe") for m in members), 0.2):
            return
    raise AssertionError("the room never became live on every member")


@contextlib.asynccontextmanager
async def members_on_both(
    first: ServerProcess, second: ServerProcess, room: str
) -> AsyncIterator[tuple[ChatMember, ChatMember]]:
    """A member of ``room`` on each server, each with a client of its own
    (:attr:`ChatMember.client`), once the room is live on both (:func:`settle`)."""
    async with (
        Client(first.url) as a,
        Client(second.url) as b,
        ChatMember(a, room) as ma,
        ChatMember(b, room) as mb,
    ):
        await settle([ma, mb], a, room)
        yield ma, mb


async def check_room_spans_processes(
    first: ServerProcess, second: ServerProcess, texts: list[str]
) -> None:
    """A room with two members on ``first`` and one on ``second``: ``texts`` are sent
    alternately from a client of each (origins ``alice`` and ``bob``; ``client`` header
    ``sender-N``, so a rate limit by that header lets them through). Every member gets
    each text exactly once, each sender's in order; nothing more arrives."""
    room = "lobby"
    async with (
        Client(first.url) as a,
        Client(first.url) as a2,
        Client(second.url) as b,
        ChatMember(a, room) as ma1,
        ChatMember(a2, room) as ma2,
        ChatMember(b, room) as mb,
    ):
        members = [ma1, ma2, mb]
        await settle(members, a, room)
        for i, text in enumerate(texts):
            sender, origin = (a, "alice") if i % 2 == 0 else (b, "bob")
            await send(sender, room, origin, text, who=f"sender-{i}")
        assert await until(
            lambda: all(len(m.texts("alice")) + len(m.texts("bob")) >= len(texts) for m in members),
            10,
        )
        await asyncio.sleep(0.3)  # nothing more arrives
        for member in members:
            got = [t for t in member.texts() if not t.startswith("probe-")]
            assert sorted(got) == sorted(texts)  # each message exactly once
            assert member.texts("alice") == texts[0::2]  # in order, per sender
            assert member.texts("bob") == texts[1::2]


async def check_outage_and_recovery(
    first: ServerProcess,
    second: ServerProcess,
    outage: Callable[[], Awaitable[None]],
    up_within: float = 10.0,
) -> None:
    """A room with a member on each server; ``outage()`` takes their backend away and
    brings it back. Every member gets a gap notice (within 15 s), both antennas are
    ``up`` again within ``up_within`` seconds, and a message sent then reaches both."""
    async with members_on_both(first, second, "sturdy") as (ma, mb):
        await outage()
        assert await until(lambda: ma.gaps >= 1 and mb.gaps >= 1, 15)
        for server in (first, second):
            assert await until(functools.partial(_antenna_is, server, "up"), up_within)
        await send(mb.client, "sturdy", "erin", "after the outage", who="erin")
        assert await until(
            lambda: "after the outage" in ma.texts() and "after the outage" in mb.texts(), 10
        )


def _antenna_is(server: ServerProcess, state: str) -> bool:
    return bool(server.health()["antenna"]["state"] == state)
