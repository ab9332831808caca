"""The load generator of the compression cases: ``loadgen.py``'s scenarios on a picows
client that negotiates permessage-deflate as browsers do.

    python bench/deflate_loadgen.py fanout|idle|rr --url ws://... --client offer|plain ...

picows has no permessage-deflate of its own, but it passes the RSV1 bit and extra
handshake headers through, so this client does the extension's work with zlib (RFC
7692): it offers ``permessage-deflate; client_max_window_bits`` (Chromium's offer),
reads what the server answered, inflates every frame with RSV1 set that a member
reads (one decoder per connection, kept across messages, which is right with or
without the server's context takeover; a fan-out member that only counts frames, see
``loadgen.SAMPLE``, reads and inflates none) and compresses what it sends, with
context takeover unless the server asked for ``client_no_context_takeover``.
``--client plain`` offers nothing.
Its RESULT line adds the bytes received on the wire and after inflating, counted from
READY (so without the warm-up), and which extension was negotiated.
"""

from __future__ import annotations

import json
import sys
import zlib
from typing import Any

import loadgen

#: words of the ``--size`` messages (a JSON document, varying with the sequence number)
WORDS = (  # noqa: SIM905
    "the quick brown fox jumps over lazy dogs while rooms push messages to "
    "members price stock order user session token update delete create status active pending"
).split()

#: what Chromium sends
OFFER = "permessage-deflate; client_max_window_bits"
_FLUSH_END = b"\x00\x00\xff\xff"


class Counters:
    """Bytes received, compressed (as on the wire) and inflated, since READY."""

    wire = 0
    inflated = 0
    messages = 0
    #: messages inflated (members that only count frames read none: see loadgen.SAMPLE)
    inflated_messages = 0
    negotiated = ""


def _parameters(header: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        params[name] = value or None
    return params


def deflate_connector(offer: bool) -> loadgen.Connector:
    async def connect(url: str) -> loadgen.Conn:
        from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

        class DeflateConn(WSListener):
            def __init__(self) -> None:
                self.handler: loadgen.Handler = loadgen._ignore
                self.transport: WSTransport | None = None
                self.decoder: Any = None
                self.encoder: Any = None
                self.encoder_takeover = False
                #: False: the handler only counts frames (nothing is copied or inflated;
                #: the decoder, never used then, keeps no context to lose)
                self.needs_data = True

            def on_ws_connected(self, transport: WSTransport) -> None:
                self.transport = transport
                header = transport.response.headers.get("Sec-WebSocket-Extensions") or ""
                if not header.startswith("permessage-deflate"):
                    return
                Counters.negotiated = header
                params = _parameters(header)
                server_bits = int(params.get("server_max_window_bits") or 15)
                client_bits = int(params.get("client_max_window_bits") or 15)
                self.decoder = zlib.decompressobj(-server_bits)
                self.encoder = zlib.compressobj(6, zlib.DEFLATED, -client_bits, 8)
                self.encoder_takeover = "client_no_context_takeover" not in params

            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                kind = frame.msg_type
                if kind == WSMsgType.TEXT or kind == WSMsgType.BINARY:
                    Counters.messages += 1
                    if not self.needs_data:
                        Counters.wire += frame.payload_size
                        self.handler(b"")
                        return
                    data = frame.get_payload_as_bytes()
                    Counters.wire += len(data)
                    if frame.rsv1:
                        # the server sends no fragments: every message is one frame
                        data = self.decoder.decompress(data + _FLUSH_END)
                    Counters.inflated += len(data)
                    Counters.inflated_messages += 1
                    self.handler(data)
                elif kind == WSMsgType.CLOSE:
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()

            def send(self, data: bytes) -> None:
                assert self.transport is not None
                encoder = self.encoder
                if encoder is None:
                    self.transport.send(WSMsgType.TEXT, data)
                    return
                flush = zlib.Z_SYNC_FLUSH if self.encoder_takeover else zlib.Z_FULL_FLUSH
                body = (encoder.compress(data) + encoder.flush(flush))[:-4]
                self.transport.send(WSMsgType.TEXT, body, rsv1=True)

            def close(self) -> None:
                if self.transport is not None and not self.transport.is_disconnected:
                    self.transport.send_close(WSCloseCode.OK)
                    self.transport.disconnect()

        headers = {"Sec-WebSocket-Extensions": OFFER} if offer else None
        _, listener = await ws_connect(
            DeflateConn, url, websocket_handshake_timeout=20, extra_headers=headers
        )
        assert isinstance(listener, DeflateConn)
        return listener

    return connect


def websockets_connector(offer: bool) -> loadgen.Connector:
    """Without picows: websockets' client (it inflates inside, so the byte counts stay 0)."""

    async def connect(url: str) -> loadgen.Conn:
        from websockets.asyncio.client import connect

        ws = await connect(
            url,
            compression="deflate" if offer else None,
            max_size=None,
            ping_interval=None,
            open_timeout=20,
        )
        assert ws.response is not None
        Counters.negotiated = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        return loadgen.WebsocketsConn(ws)

    return connect


class CountingControl(loadgen.Control):
    """Resets the byte counters at READY and reports them with the RESULT."""

    def say(self, word: str, data: dict[str, Any] | None = None) -> None:
        if word == "READY":
            Counters.wire = Counters.inflated = Counters.messages = 0
            Counters.inflated_messages = 0
        if word == "RESULT" and data is not None:
            received = Counters.messages or 1
            data = {
                **data,
                "wire_bytes_per_message": Counters.wire / received,
                "inflated_bytes_per_message": Counters.inflated / (Counters.inflated_messages or 1),
                "negotiated": Counters.negotiated,
            }
        super().say(word, data)


def document_text(seq: int, now_ns: int, size: int) -> str:
    """The publisher's message for ``--size``: the marker, then a JSON document of about
    ``size`` characters whose values change with ``seq`` (compressible as real data is,
    not as a run of one letter)."""
    items: list[dict[str, Any]] = []
    text = ""
    while len(text) < size:
        k = len(items)
        word = WORDS[(seq * 7 + k * 3) % len(WORDS)]
        items.append(
            {"id": seq * 1000 + k, "name": f"{word} {k}", "qty": (seq + k) % 97, "tag": word}
        )
        text = json.dumps({"seq": seq, "items": items})
    return f"@{now_ns}#{seq}@" + text


def _take(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    if flag not in argv:
        return None, argv
    at = argv.index(flag)
    return argv[at + 1], argv[:at] + argv[at + 2 :]


def main(argv: list[str]) -> None:
    """``loadgen.main`` with this client: ``--client offer`` (the default) or ``plain``;
    ``--size N``: fan-out messages of about N characters of JSON."""
    client, argv = _take(argv, "--client")
    offer = client != "plain"
    size, argv = _take(argv, "--size")
    if size is not None:
        chars = size

        def sized_text(seq: int, now_ns: int, size: int = 0) -> str:
            # common.fanout_text's signature (loadgen passes seq and now_ns); --size wins
            return document_text(seq, now_ns, int(chars))

        # loadgen calls the fanout_text it imported from common: replaced in its namespace
        loadgen.fanout_text = sized_text  # type: ignore[attr-defined]
    try:
        import picows  # noqa: F401
    except ImportError:  # websockets' client negotiates permessage-deflate itself (slower)
        connector = websockets_connector(offer)
        label = "websockets-deflate" if offer else "websockets"
    else:
        connector = deflate_connector(offer)
        label = "picows-deflate" if offer else "picows"
    loadgen.pick_client = lambda name: (label, connector)
    loadgen.Control = CountingControl  # type: ignore[misc]
    loadgen.main([*argv, "--client", "picows"])


if __name__ == "__main__":
    main(sys.argv[1:])
