"""A chat server process for the end-to-end tests: ``python redis_chat_server.py REDIS_URL``.

Serves the xraptor 0.4 chat routes (``xraptor.demo``) on the Redis antenna, with
``redis-rate-limit`` on the send route (limit from ``XRAPTOR_TEST_LIMIT``, per
``client`` header), binds a free port and prints it on its first line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import xraptor.demo  # noqa: F401  (registers the chat routes)
from xraptor import XRaptor


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
    await server.start()
    print(server.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
