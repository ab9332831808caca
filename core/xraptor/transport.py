"""Listening transports: what serves an app's connections on a host and port.

A transport is offered by a plugin through the ``xraptor_register_transports``
hook (``registry.add(name, listen)``) and selected with ``XRaptor(...,
transport=name)`` or ``xraptor run --transport name``; the ``websockets`` server
is the built-in one and registers the same way. ASGI is not a listening
transport: an ASGI server serves ``server.asgi_app()``.

``listen(app, options)`` binds and returns a :class:`Listener`. For each
connection the transport builds a :class:`~xraptor.connection.Connection`
subclass (the per-connection seam) and awaits ``app._open(connection)`` in the
connection's own task. For each upgrade request it answers plain HTTP GETs with
``app.http_endpoint(path)``, refuses upgrades with 503 while ``app.draining``,
and asks ``app.admit(request, remote_ip)`` (Origin policy, connect guards) before
the WebSocket opens, passing the admitted identity to the connection.
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .server import XRaptor


@dataclass(frozen=True, slots=True)
class ListenOptions:
    """What a listening transport is asked for (from ``XRaptor(...)``'s arguments)."""

    host: str
    port: int
    ssl: _ssl.SSLContext | None = None
    reuse_port: bool = False
    #: largest inbound message in bytes (``None``: no limit)
    max_size: int | None = 2**20
    #: inbound messages buffered per connection
    max_queue: int | None = 32
    ping_interval: float | None = 20
    ping_timeout: float | None = 20
    #: seconds a closing handshake may take
    close_timeout: float = 2.0
    #: ``"shared"``, ``"deflate"`` or ``None`` (see ``XRaptor(compression=...)``); a
    #: transport that cannot compress negotiates nothing
    compression: str | None = "shared"


class Listener(Protocol):
    """A transport listening for an app (what ``listen`` returns)."""

    @property
    def port(self) -> int:
        """The bound port (the one picked when asked for port 0)."""
        ...

    async def close_connections(self, timeout: float) -> None:
        """Stop accepting; close every connection with 1001 (going away) and abort
        those still open after ``timeout`` seconds."""
        ...

    async def wait_closed(self) -> None:
        """Stop listening (if not yet) and wait until every connection ended."""
        ...


#: ``listen(app, options)``: bind and serve ``app``'s connections
Listen = Callable[["XRaptor", ListenOptions], Awaitable[Listener]]
