"""Corking: a connection's pushes of one event-loop iteration, written together.

A fan-out pushes one frame to each member per message. When several messages fan out
in the same iteration (an antenna read that brought several, a burst of publishes),
writing each frame at once costs a socket write per member and message, and the client
a read for each. A transport that corks keeps the pushes of the iteration per
connection and writes each connection's frames in one socket write at the loop's next
callback; anything else it writes to that connection (an answer, a close frame) first
writes the pushes waiting, so the order on the connection is the order of the calls.
uWebSockets drains its pub/sub the same way, once per loop iteration.

A connection's pushes wait at most :data:`LIMIT` bytes: past it they are written at
once, and the next push checks the outgoing buffer against ``max_buffer`` again (the
slow-consumer bound holds within an iteration too). Once a listener starts closing its
connections (:attr:`Cork.immediate`), pushes are written as they come, ahead of the
close frames. Code that writes to a connection should go through its methods
(``send``, ``write``, ``close``), which write the pushes waiting first; a write
straight to the library's object under it (``connection.ws``) may overtake them.

The built-in ``websockets`` transport and xraptor-picows cork; a transport plugin can
too: give each connection its pushes waiting (the first one as the bytes themselves:
a list per connection and message, alive until the flush, would set off Python's
garbage collector every few hundred deliveries, a pause that grows with the number of
connections) and a ``flush()`` that writes them
(and never lets an exception out: a failed write is the connection's end, not the
other connections'), add the connection to :attr:`Cork.dirty` at its first push of the
iteration and call :meth:`Cork.schedule` when :attr:`Cork.scheduled` is false.
:func:`text_frames` builds the frames of a server that negotiated no extension.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Protocol

__all__ = ["LIMIT", "Cork", "Corked", "text_frames"]

logger = logging.getLogger("xraptor.connection")

#: the bytes of pushes a connection keeps waiting before it writes them anyway
LIMIT = 64 * 1024


class Corked(Protocol):
    """A connection with pushes waiting (see :class:`Cork`)."""

    def flush(self) -> None:
        """Write the pushes waiting, if any, in one socket write."""


class Cork:
    """The connections with pushes waiting in one event loop, flushed at its next callback."""

    __slots__ = ("dirty", "immediate", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: connections with pushes waiting, in the order of their first push
        self.dirty: list[Corked] = []
        #: whether :meth:`flush` is scheduled
        self.scheduled = False
        #: pushes are written at once, not kept (the listener is closing its connections)
        self.immediate = False

    def schedule(self) -> None:
        """Flush at the loop's next callback (a connection was added to :attr:`dirty`)."""
        self.scheduled = True
        self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every connection's pushes waiting."""
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for connection in dirty:
            try:
                connection.flush()
            except Exception:  # one connection's failure must not hold the others' pushes
                logger.exception("writing the pushes waiting failed")

    def stop(self) -> None:
        """Write what waits and keep nothing from now on (the listener closes its
        connections: what was pushed goes before the close frames)."""
        self.immediate = True
        self.flush()


#: a server's text frame header (FIN, opcode 1, unmasked) for each payload length < 126
_SHORT_HEADERS = [bytes((0x81, size)) for size in range(126)]
_MEDIUM_HEADER = struct.Struct("!BBH")
_LONG_HEADER = struct.Struct("!BBQ")


def text_frames(payloads: list[bytes]) -> bytes:
    """``payloads`` as consecutive unfragmented text frames from a server (unmasked, no
    extension), ready for the socket."""
    parts: list[bytes] = []
    for payload in payloads:
        size = len(payload)
        if size < 126:
            parts.append(_SHORT_HEADERS[size])
        elif size < 65536:
            parts.append(_MEDIUM_HEADER.pack(0x81, 126, size))
        else:
            parts.append(_LONG_HEADER.pack(0x81, 127, size))
        parts.append(payload)
    return b"".join(parts)
