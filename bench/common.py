"""Shared by every bench process: the standard library only.

The 0.4.1 server runs in its own virtualenv with ``bench/`` on ``sys.path`` and
imports this module too, so nothing here may import xraptor or a third-party package.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import socket
from collections.abc import Coroutine
from typing import Any

#: the room every fan-out member joins
ROOM = "bench-room"
#: a fan-out message carries ``@<monotonic_ns>#<seq>@`` (time.monotonic is system-wide on Linux)
MARK = re.compile(rb"@(\d+)#(\d+)@")
#: sequence numbers of warm-up probes start here; measured messages count from 0
PROBE_BASE = 1_000_000_000
#: what the slow handler of the ``mixed`` case awaits (xraptor ``GET /slow``, socket.io ``slow``)
SLOW_SECONDS = 0.005
#: uvicorn's WebSocket implementation for ``xraptor-asgi`` (``run.py --asgi-ws``)
DEFAULT_ASGI_WS = "websockets-sansio"


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fanout_text(seq: int, now_ns: int, size: int = 100) -> str:
    """The publisher's message: the marker padded to about ``size`` characters."""
    head = f"@{now_ns}#{seq}@"
    return head + "x" * max(0, size - len(head))


def run_loop(main: Coroutine[Any, Any, None], loop: str) -> None:
    """Run ``main`` on uvloop (``loop == "uvloop"`` and installed) or asyncio."""
    if loop == "uvloop":
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
