"""What travels through ``NOTIFY``: channel identifiers, lock keys and payload frames.

PostgreSQL's limits, and how they are hidden:

* A ``LISTEN`` channel is an identifier of at most 63 bytes; an xraptor channel is any
  non-empty string (1 KiB and more, any character). Each channel is carried by the
  identifier ``<prefix>_<32 hex digits>``: the first 128 bits of SHA-256 of
  ``<prefix>:<channel>`` (which SQL can compute as well, see the README). The payload
  names the real channel, so two channels whose hashes collided would still be told
  apart by the receiver.
* A channel's liveness is a shared advisory lock held by the listening session; its
  64-bit key is the first half of the same hash (:func:`lock_key`).
* A ``NOTIFY`` payload is text shorter than 8000 bytes, without NUL. Payloads are
  escaped (:func:`escape`: ``\\`` -> ``\\\\``, NUL -> ``\\0``, a lone surrogate ->
  ``\\uXXXX``) and a message whose frame would not fit is split into chunks sent in one
  transaction, in order, and joined by the receiver (:class:`Reassembler`).

Frames (all text):

* ``m<seq>:<body>``: a whole message;
* ``c<seq>:<index>:<count>:<piece>``: one chunk of a larger one (the pieces, joined,
  are a body);

where ``<seq>`` is the sender's message number in hex (it keeps two equal messages of
one transaction apart: PostgreSQL delivers identical notifications of a transaction
once) and a body is ``<n>:<escaped channel of n characters><escaped message>``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

#: the longest NOTIFY payload PostgreSQL accepts, in bytes (it refuses 8000)
PAYLOAD_LIMIT = 7999
#: bytes of a chunk's piece: the frame's header (``c`` and three hex numbers) fits in the rest
PIECE_SIZE = PAYLOAD_LIMIT - 64
#: what a prefix may be: a lowercase SQL identifier short enough for ``<prefix>_<hash>``
PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,29}")

_SPECIAL = re.compile("[\\\\\x00\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(\\|0|u[0-9a-f]{4})")


def _digest(prefix: str, channel: str) -> bytes:
    """The first 16 bytes of SHA-256 of ``<prefix>:<channel>`` (SQL computes it too:
    ``sha256(convert_to(prefix || ':' || channel, 'UTF8'))``)."""
    data = f"{prefix}:".encode() + channel.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).digest()[:16]


def identifier(prefix: str, channel: str) -> str:
    """The ``LISTEN`` / ``NOTIFY`` channel identifier carrying ``channel`` (at most 61 bytes)."""
    return f"{prefix}_{_digest(prefix, channel).hex()}"


def lock_key(prefix: str, channel: str) -> int:
    """The advisory lock key (a signed 64-bit integer) that says ``channel`` is watched."""
    return int.from_bytes(_digest(prefix, channel)[:8], "big", signed=True)


def lock_fields(key: int) -> tuple[int, int]:
    """``pg_locks``' ``classid`` and ``objid`` of the advisory lock ``key`` (a bigint lock)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    if char == "\x00":
        return "\\0"
    return f"\\u{ord(char):04x}"


def _unescape_one(match: re.Match[str]) -> str:
    code = match.group(1)
    if code == "\\":
        return "\\"
    if code == "0":
        return "\x00"
    return chr(int(code[1:], 16))


def escape(text: str) -> str:
    """``text`` as PostgreSQL text: no NUL, no lone surrogate (:func:`unescape` inverts it)."""
    if text.isascii():
        if "\\" in text or "\x00" in text:
            return text.replace("\\", "\\\\").replace("\x00", "\\0")
        return text
    return _SPECIAL.sub(_escape_one, text)


def unescape(text: str) -> str:
    return _ESCAPED.sub(_unescape_one, text) if "\\" in text else text


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def body(escaped_channel: str, message: str) -> str:
    """The body of a frame: the escaped channel (length first) and the escaped message."""
    return f"{len(escaped_channel)}:{escaped_channel}{escape(message)}"


def frames(seq: int, text: str) -> list[str]:
    """The payloads that carry one body, in order: one frame, or its chunks."""
    head = f"m{seq:x}:"
    size = utf8_size(text)
    if size + len(head) <= PAYLOAD_LIMIT:
        return [head + text]
    pieces = _split(text, PIECE_SIZE)
    count = len(pieces)
    return [f"c{seq:x}:{index:x}:{count:x}:{piece}" for index, piece in enumerate(pieces)]


def _split(text: str, size: int) -> list[str]:
    """``text`` in pieces of at most ``size`` bytes of UTF-8, cut between characters."""
    if text.isascii():
        return [text[start : start + size] for start in range(0, len(text), size)]
    data = text.encode("utf-8")
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character
            end -= 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces


def parse_body(text: str) -> tuple[str, str]:
    """``(channel, message)`` of a body.

    :raises ValueError: when ``text`` is not a body
    """
    colon = text.index(":")
    end = colon + 1 + int(text[:colon])
    if end > len(text):
        raise ValueError("the channel runs past the end of the body")
    return unescape(text[colon + 1 : end]), unescape(text[end:])


@dataclass
class _Partial:
    seq: str
    count: int
    pieces: list[str] = field(default_factory=list)
    size: int = 0


class Reassembler:
    """Joins chunked messages, per sending session (the ``pid`` a notification names).

    A session's chunks arrive in order and together (one transaction), so one partial
    message per session is kept; a partial that is broken off (its session's next
    message starts) is dropped and counted. Memory stays bounded: a partial grows to
    at most ``max_size`` characters, past which it is dropped and counted too.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._partials: dict[int, _Partial] = {}
        #: messages dropped (broken off, or larger than ``max_size``)
        self.dropped = 0

    def clear(self) -> None:
        """Forget every partial message (the listening connection was lost)."""
        self.dropped += len(self._partials)
        self._partials.clear()

    def feed(self, pid: int, payload: str) -> str | None:
        """The body ``payload`` completes, if any.

        :raises ValueError: when ``payload`` is not a frame
        """
        kind = payload[:1]
        if kind == "m":
            if self._partials.pop(pid, None) is not None:
                self.dropped += 1
            return payload[payload.index(":") + 1 :]
        if kind != "c":
            raise ValueError(f"not an xraptor frame: {payload[:16]!r}")
        seq, index, count, piece = payload[1:].split(":", 3)
        partial = self._partials.get(pid)
        if index == "0":
            if partial is not None:
                self.dropped += 1
            partial = self._partials[pid] = _Partial(seq, int(count, 16))
        elif partial is None or partial.seq != seq or int(index, 16) != len(partial.pieces):
            return None  # the rest of a message whose start was missed (or dropped)
        partial.pieces.append(piece)
        partial.size += len(piece)
        if partial.size > self.max_size:
            del self._partials[pid]
            self.dropped += 1
            return None
        if len(partial.pieces) < partial.count:
            return None
        del self._partials[pid]
        return "".join(partial.pieces)
