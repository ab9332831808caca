"""Plain HTTP helpers for tests of a running server."""

from __future__ import annotations

import json
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
