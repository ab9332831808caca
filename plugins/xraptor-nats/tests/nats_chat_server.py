"""A chat server process for the end-to-end tests:
``python nats_chat_server.py ANTENNA_URL PORT [HISTORY_SIZE]``.

Serves the xraptor 0.4 chat routes (``xraptor.demo``) on the given antenna, plus
``/svc/...`` forwarded over NATS with the ``nats-forward`` middleware. With
``HISTORY_SIZE``, the rooms whose id starts with ``h-`` keep that many messages.
"""

from __future__ import annotations

import asyncio
import sys

import xraptor.demo  # noqa: F401  (registers the chat routes)
from xraptor import XRaptor


async def main(antenna: str, port: int, history_size: int) -> None:
    XRaptor.use_middleware(
        "nats-forward", priority=1, pattern=r"^/svc/", servers=antenna, timeout=1.0
    )
    if history_size:
        XRaptor.configure_rooms(r"h-", history_size=history_size)
    await XRaptor("127.0.0.1", port, antenna=antenna, ping_interval=None).serve()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0))
