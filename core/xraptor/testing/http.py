"""Plain HTTP helpers for tests of a running server."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any


def health(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """``GET /health`` of a server: its HTTP status and JSON body (503 is not an error).

    :raises OSError: when nothing answers on the port (e.g. the server is not up yet)
    """
    url = f"http://{host}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    data: dict[str, Any] = json.loads(body)
    return status, data


async def seconds_until_health(
    port: int, status: int, limit: float, host: str = "127.0.0.1"
) -> float:
    """Poll ``/health`` until it answers ``status``: the seconds it took (``inf`` past
    ``limit``). Each look runs in a thread, so the server may share the event loop."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if (await asyncio.to_thread(health, port, host, 2.0))[0] == status:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return float("inf")
