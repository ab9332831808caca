"""Members of the chat demo's rooms (:mod:`xraptor.demo`'s routes), for end-to-end tests of
a room that spans server processes.

* :class:`ChatMember`: a stream on a room that records every message and gap notice
  it gets (``async with ChatMember(client, room) as member: ...``);
* :func:`send`: post a message to a room;
* :func:`settle`: post probes until every member gets them, so that the room is known
  to be live in every process before a test counts messages.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

import orjson

from ..client import Client
from ..protocol import Response
from .conformance import until

__all__ = ["JOIN", "SEND", "ChatMember", "send", "settle"]

#: the demo's routes: SUB to join a room, POST to send to it
JOIN, SEND = "/chat_messages", "/send_message_to_chat_room"


class ChatMember:
    """A stream on the chat room ``room`` of ``client``'s server that records what it
    gets: :attr:`messages` (``{"origin", "message"}``) and :attr:`gaps` (gap notices)."""

    def __init__(self, client: Client, room: str) -> None:
        self.stream = client.subscribe(JOIN, {"chat_id": room})
        self.messages: list[dict[str, Any]] = []
        self.gaps = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.stream.__aenter__()
        self._task = asyncio.ensure_future(self._collect())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
