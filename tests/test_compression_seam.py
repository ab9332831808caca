"""What ``compression="shared"`` relies on of websockets' internals (see xraptor.deflate).

These fail when a websockets release changes them; then fix xraptor.deflate and the
websockets range in pyproject.toml together.
"""

from __future__ import annotations

import base64
import inspect
import os
import tomllib
import zlib
from importlib import metadata
from pathlib import Path

import websockets.asyncio.server
from packaging.requirements import Requirement
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from xraptor.deflate import (
    MIN_SIZE,
    SharedCompressors,
    SharedDeflateFactory,
    SharedPerMessageDeflate,
    shared_compressor,
)
from xraptor.protocol import push_prefix, push_tail

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_websockets_is_in_the_pinned_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [Requirement(d) for d in project["dependencies"] if d.startswith("websockets")]
    assert len(pins) == 1 and pins[0].specifier, "websockets needs a bounded range"
    assert any(spec.operator == "<" for spec in pins[0].specifier)
    assert pins[0].specifier.contains(metadata.version("websockets"))


def test_frame_serialize_writes_what_the_extension_returns() -> None:
    """Short messages and control frames leave the extension as they came; websockets
    writes the frame the extension returned."""
    extension = SharedPerMessageDeflate(True, 15, SharedCompressors().get(15))
    short = Frame(Opcode.TEXT, b"\x01\x02", True)
    assert short.serialize(mask=False, extensions=[extension]) == b"\x81\x02\x01\x02"
    ping = Frame(Opcode.PING, b"p", True)
    assert ping.serialize(mask=False, extensions=[extension]) == b"\x89\x01p"
    long = Frame(Opcode.TEXT, b"x" * MIN_SIZE, True).serialize(mask=False, extensions=[extension])
    assert long[0] == 0xC1 and len(long) < 100  # FIN + RSV1 + text, compressed


def test_protocol_send_text_goes_through_the_extensions() -> None:
    assert set(inspect.signature(Protocol.send_text).parameters) == {"self", "data", "fin"}
    protocol = ServerProtocol()
    extension = SharedPerMessageDeflate(True, 15, SharedCompressors().get(15))
    protocol.extensions = [extension]
    protocol.state = protocol.state.__class__.OPEN
    text = b'{"a":"' + b"text " * 400 + b'"}'
    protocol.send_text(text)
    (wire,) = protocol.data_to_send()
    assert wire[0] == 0xC1 and wire[1] < 126  # compressed by the extension: short
    inflated = zlib.decompressobj(-15).decompress(wire[2:] + b"\x00\x00\xff\xff")
    assert inflated == text


def test_per_message_deflate_keeps_what_the_shared_one_reads() -> None:
    """The negotiated extension's attributes and websockets' decoding of received frames."""
    factory = SharedDeflateFactory(SharedCompressors())
    params, extension = factory.process_request_params([("client_max_window_bits", None)], [])
    assert isinstance(extension, SharedPerMessageDeflate)
    assert isinstance(extension, PerMessageDeflate)
    assert ("server_no_context_takeover", None) in params
    assert extension.local_no_context_takeover is True
    assert extension.remote_max_window_bits == 12
    assert shared_compressor([extension]) is extension.compressor
    assert not hasattr(extension, "encoder")  # no compressor per connection
    # a compressed request decodes through PerMessageDeflate.decode
    z = zlib.compressobj(wbits=-12)
    data = (z.compress(b"request") + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
    frame = extension.decode(Frame(Opcode.TEXT, data, True, True), max_size=None)
    assert frame.data == b"request" and frame.rsv1 is False


def test_serve_takes_extensions_without_its_own_compression() -> None:
    parameters = inspect.signature(websockets.asyncio.server.serve).parameters
    assert "extensions" in parameters and "compression" in parameters
    # the transport finds the negotiated extension on ``ws.protocol.extensions``
    assert ServerProtocol().extensions == []


def _parse(data: bytes, server_window: int) -> Frame:
    """``data`` read as a client would: websockets' parser and PerMessageDeflate."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    client = PerMessageDeflate(True, True, server_window, 15)
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=[client])
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("the frame is incomplete")


def test_a_frame_written_below_websockets_parses_as_its_own() -> None:
    """Pushes are written as whole frames to the transport (SharedDeflateConnection):
    websockets' own parser and decoder read them, for each length encoding."""
    compressor = SharedCompressors().get(12)
    noise = base64.b64encode(os.urandom(150_000)).decode()  # compresses to > 64 KiB
    for message in ("short", "olá 🦖 " * 400, noise):
        push = push_prefix("member-ü") + push_tail(message)
        frame = _parse(compressor.websocket_frame(push), 12)
        assert frame.opcode is Opcode.TEXT and frame.fin and not frame.rsv1
        assert frame.data == push
    assert hasattr(ServerProtocol(), "expect_continuation_frame")
