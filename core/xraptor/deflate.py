"""``compression="shared"``: permessage-deflate that compresses a room's push once.

A push differs between the members of a room only by its ``request_id`` prefix
(``{"request_id":"..."``); the rest, its tail, is the same bytes for all of them.
DEFLATE (RFC 1951) lets a message be made of independently produced blocks, so
each push is written as

- the member's prefix in a *stored* block (a 5-byte header, then the bytes: a
  short id gains nothing from Huffman coding and costs microseconds to code), then
- the tail, compressed **once per message** for every member, ending on a
  flush boundary (``00 00 ff ff``, which RFC 7692 strips from the end of a message).

Messages shorter than :data:`MIN_SIZE` are sent uncompressed, as RFC 7692 allows.

The tail refers to none of the prefix's bytes and no earlier message's, because
every message is compressed from a clean state (``Z_FULL_FLUSH`` resets the
dictionary, as ``deflateReset`` does for uWebSockets' shared compressor). The server
therefore negotiates ``server_no_context_takeover`` and needs no compressor per
connection: one per window size serves the whole process. It also asks for
``client_no_context_takeover`` (see :data:`CLIENT_NO_CONTEXT_TAKEOVER`), so that an
idle connection holds no decompressor either.

The ``websockets`` seam: websockets has no API to send a compressed payload (its
extension compresses every data frame). Two pieces make up for it:

- :class:`SharedPerMessageDeflate`, a websockets extension (the documented
  ``Extension`` base, through ``PerMessageDeflate`` so that received frames are
  decompressed by websockets itself), negotiates and compresses what websockets
  sends: answers and acknowledgments of :data:`MIN_SIZE` or more, each on its own;
- pushes, the fan-out hot path, are written by the transport
  (``xraptor.websocket_transport.SharedDeflateConnection``) as whole frames below
  websockets' protocol (:meth:`SharedCompressor.websocket_frame`).

What they rely on of websockets' internals is pinned in pyproject and checked by
``tests/test_compression_seam.py``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CTRL_OPCODES, Frame, Opcode
from websockets.typing import ExtensionParameter

#: ``compression=``: one compression for the pushes of a room, websockets' own
#: permessage-deflate per connection, or none
COMPRESSIONS = ("shared", "deflate", None)

#: ask clients to compress each message on its own too: the server then keeps no
#: decompressor between messages, so an idle connection costs what a plain one does
#: (bench/RESULTS.md, "Compression"); requests are short and compress little anyway
CLIENT_NO_CONTEXT_TAKEOVER = True

#: the window clients compress with (what websockets asks by default): 4 KiB
CLIENT_MAX_WINDOW_BITS = 12

#: messages shorter than this (bytes) go uncompressed (RSV1 unset, which RFC 7692 §6
#: allows): without context takeover a short message shrinks by a few percent, and
#: compressing it costs more CPU than writing it (Node's ``ws`` uses the same threshold)
MIN_SIZE = 1024

#: zlib's compression level and memory level for the shared compressors (websockets'
#: own memLevel; the hash table each message clears is 2**(memLevel + 8) bytes)
LEVEL = 6
MEM_LEVEL = 5

#: where the shared tail of a push begins (see :func:`xraptor.protocol.push_tail`)
_TAIL_START = b',"payload":'

#: the end of a sync or full flush, removed from a message's end (RFC 7692 §7.2.1)
_FLUSH_END = b"\x00\x00\xff\xff"

#: the longest stored block (RFC 1951 §3.2.4)
_STORED_MAX = 0xFFFF
_stored_head = struct.Struct("<BHH").pack
#: WebSocket frame headers by payload length (RFC 6455 §5.2)
_head_short = struct.Struct("!BB").pack
_head_medium = struct.Struct("!BBH").pack
_head_long = struct.Struct("!BBQ").pack


def stored(data: bytes) -> bytes:
    """``data`` as non-final stored DEFLATE blocks (RFC 1951 §3.2.4): a block may
    start where a flush ended, and the next block may start right after it."""
    if len(data) <= _STORED_MAX:
        return _stored_head(0, len(data), len(data) ^ 0xFFFF) + data
    return b"".join(
        stored(data[start : start + _STORED_MAX]) for start in range(0, len(data), _STORED_MAX)
    )


class SharedCompressor:
    """The process's compressor for one window size, and the last push tail it
    compressed (one tail: a room's fan-out loop sends the same tail to every member
    before the next message)."""

    __slots__ = ("_deflated_tail", "_tail", "_zlib", "wbits")

    def __init__(self, wbits: int) -> None:
        self.wbits = wbits
        self._zlib = zlib.compressobj(LEVEL, zlib.DEFLATED, -wbits, MEM_LEVEL)
        self._tail = b""
        self._deflated_tail = b""

    def compress(self, data: bytes) -> bytes:
        """``data`` compressed on its own: no reference to anything compressed before,
        and nothing after may refer to it; ends on a flush boundary, marker removed."""
        z = self._zlib
        return (z.compress(data) + z.flush(zlib.Z_FULL_FLUSH))[:-4]

    def deflate(self, frame: bytes) -> bytes:
        """A push frame's compressed payload: its tail compressed once for all members,
        its prefix stored.

        The tail is recognised by content (``frame.endswith``), so the result is right
        whatever the frame: a frame that does not end with the tail compressed last
        only costs a compression of its own tail.
        """
        tail = self._tail
        if not (tail and frame.endswith(tail)):
            start = frame.find(_TAIL_START)
            if start < 0:
                return self.compress(frame)
            tail = self._tail = frame[start:]
            self._deflated_tail = self.compress(tail)
        cut = len(frame) - len(tail)
        if cut == 0:
            return self._deflated_tail
        return stored(frame[:cut]) + self._deflated_tail

    def websocket_frame(self, frame: bytes) -> bytes:
        """A push as a whole server-to-client WebSocket frame (RFC 6455 §5.2: FIN, text,
        no mask), to write below websockets: :meth:`deflate` with RSV1 set, or as it is
        under :data:`MIN_SIZE`."""
        if len(frame) < MIN_SIZE:
            first, payload = 0x81, frame
        else:
            first, payload = 0xC1, self.deflate(frame)
        size = len(payload)
        if size < 126:
            return _head_short(first, size) + payload
        if size < 65536:
            return _head_medium(first, 126, size) + payload
        return _head_long(first, 127, size) + payload


class SharedCompressors:
    """The shared compressors of one listener, by window size (made when first needed)."""

    def __init__(self) -> None:
        self._by_wbits: dict[int, SharedCompressor] = {}

    def get(self, wbits: int) -> SharedCompressor:
        compressor = self._by_wbits.get(wbits)
        if compressor is None:
            compressor = self._by_wbits[wbits] = SharedCompressor(wbits)
        return compressor


class SharedPerMessageDeflate(PerMessageDeflate):
    """permessage-deflate without server context takeover, compressing with the
    process's :class:`SharedCompressor`; received frames are decoded by websockets'
    ``PerMessageDeflate``."""

    def __init__(
        self,
        remote_no_context_takeover: bool,
        remote_max_window_bits: int,
        compressor: SharedCompressor,
    ) -> None:
        super().__init__(
            remote_no_context_takeover,
            True,  # local_no_context_takeover: no encoder of its own is made
            remote_max_window_bits,
            compressor.wbits,
        )
        self.compressor = compressor

    def encode(self, frame: Frame) -> Frame:
        data = frame.data
        if frame.opcode in CTRL_OPCODES:
            return frame
        if not frame.fin or frame.opcode is Opcode.CONT or len(data) < MIN_SIZE:
            # a short message, or a fragmented one (xraptor sends none: fragments would
            # interleave in the shared compressor), goes uncompressed
            return frame
        return Frame(frame.opcode, self.compressor.compress(bytes(data)), True, True)


class SharedDeflateFactory(ServerPerMessageDeflateFactory):
    """Negotiates permessage-deflate as websockets does, with ``server_no_context_takeover``
    (and :data:`CLIENT_NO_CONTEXT_TAKEOVER`), and makes :class:`SharedPerMessageDeflate`."""

    def __init__(self, compressors: SharedCompressors) -> None:
        super().__init__(
            server_no_context_takeover=True,
            client_no_context_takeover=CLIENT_NO_CONTEXT_TAKEOVER,
            client_max_window_bits=CLIENT_MAX_WINDOW_BITS,
        )
        self.compressors = compressors

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], SharedPerMessageDeflate]:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        return response, SharedPerMessageDeflate(
            negotiated.remote_no_context_takeover,
            negotiated.remote_max_window_bits,
            self.compressors.get(negotiated.local_max_window_bits),
        )


def shared_compressor(extensions: Sequence[Any]) -> SharedCompressor | None:
    """The shared compressor a connection negotiated (``None``: it compresses nothing
    this way)."""
    for extension in extensions:
        if isinstance(extension, SharedPerMessageDeflate):
            return extension.compressor
    return None


def check_compression(value: object) -> str | None:
    """``value`` if it names a compression policy, else a :class:`ValueError` that
    lists them."""
    if value in COMPRESSIONS and (value is None or isinstance(value, str)):
        return value
    raise ValueError(
        f"compression must be 'shared', 'deflate' or None, got {value!r}: 'shared' "
        "compresses each room message once for all members, 'deflate' is websockets' "
        "permessage-deflate per connection, None negotiates no compression"
    )
