"""xraptor-picows: a listening transport for xraptor on picows.

``XRaptor(..., transport="picows")`` or ``xraptor run --transport picows`` serves the
same protocol, HTTP endpoints, Origin policy, connect guards, limits, keepalive,
drain and TLS as the built-in websockets transport, on picows' faster WebSocket
implementation. This module only registers the transport; picows loads when the
transport listens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xraptor

if TYPE_CHECKING:
    from xraptor.plugins import TransportRegistry
    from xraptor.server import XRaptor
    from xraptor.transport import Listener, ListenOptions

__all__ = ["listen", "xraptor_register_transports"]


async def listen(app: XRaptor, options: ListenOptions) -> Listener:
    """Serve ``app`` with picows (see :mod:`xraptor_picows.server`)."""
    from .server import listen as listen_with_picows

    return await listen_with_picows(app, options)


@xraptor.hookimpl
def xraptor_register_transports(registry: TransportRegistry) -> None:
    registry.add("picows", listen)
