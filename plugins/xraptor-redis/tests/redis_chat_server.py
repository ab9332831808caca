"""A chat server process for the end-to-end tests: ``python redis_chat_server.py REDIS_URL``.

Serves the xraptor 0.4 chat routes (``xraptor.demo``) on the Redis antenna, with
``redis-rate-limit`` on the send route (limit from ``XRAPTOR_TEST_LIMIT``, per
``client`` header), binds a free port and prints it on its first line.
"""

from __future__ import annotations

import asyncio
import os
import sys

import xraptor.demo  # noqa: F401  (registers the chat routes)
from xraptor import XRaptor
from xraptor.testing import serve_until_terminated


async def main(url: str) -> None:
    XRaptor.use_middleware(
        "redis-rate-limit",
        priority=1,
        pattern=r"^/send_message_to_chat_room$",
        url=url,
        limit=int(os.environ.get("XRAPTOR_TEST_LIMIT", "1000")),
        window=30,
        key="header:client",
        scope=os.environ.get("XRAPTOR_TEST_SCOPE", "e2e"),
    )
    server = XRaptor(
        "127.0.0.1",
        0,
        antenna="redis",
        antenna_options={"url": url, "publish_timeout": 1.0, "reconnect_max_delay": 0.3},
        ping_interval=None,
    )
    await serve_until_terminated(server)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
