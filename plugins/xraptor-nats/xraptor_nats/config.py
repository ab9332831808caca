"""Option parsing shared by the antenna and the forwarding middleware."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_SERVERS = "nats://127.0.0.1:4222"

#: nats-py's outgoing buffer (bytes); past it a publish waits for the socket
PENDING_SIZE = 2 * 1024 * 1024


def split_servers(servers: object) -> list[str]:
    """``"nats://a:4222,nats://b:4222"`` or a list of URLs -> a list of URLs."""
    if isinstance(servers, str):
        items = [item.strip() for item in servers.split(",")]
    elif isinstance(servers, list | tuple):
        items = [str(item).strip() for item in servers]
    else:
        raise TypeError(f"servers must be a str or a list of str, got {type(servers).__name__}")
    items = [item for item in items if item]
    if not items:
        raise ValueError("servers must name at least one NATS server")
    return items


def redact(url: str) -> str:
    """``url`` without the password or token it may carry (for logs and /health)."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def positive(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{key} must be a positive number of seconds, got {value!r}")
    return float(value)
