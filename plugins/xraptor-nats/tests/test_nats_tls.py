"""A ``tls://`` URL selects the NATS antenna, which then talks TLS to the server."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats_support import NatsServer, free_port, nats_binary

from xraptor.plugins import resolve_antenna
from xraptor.testing import eventually, self_signed_cert
from xraptor_nats.antenna import NatsAntenna


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[NatsServer, ssl.SSLContext]]:
    binary, openssl = nats_binary(), shutil.which("openssl")
    if binary is None or openssl is None:
        pytest.skip("needs the nats-server and openssl binaries")
    cert, key = self_signed_cert(tmp_path)
    port = free_port()
    server = NatsServer(
        f"tls://127.0.0.1:{port}",
        binary,
        ("--tls", "--tlscert", str(cert), "--tlskey", str(key)),
    )
    server.start()
    context = ssl.create_default_context(cafile=str(cert))
    try:
        yield server, context
    finally:
        server.stop()


async def test_tls_url(tls_nats: tuple[NatsServer, ssl.SSLContext]) -> None:
    server, context = tls_nats
    a = resolve_antenna(server.url, connect_options={"tls": context})
    b = resolve_antenna(server.url, connect_options={"tls": context})
    assert isinstance(a, NatsAntenna) and a.servers == [server.url]
    async with a, b, a.subscribe("secure") as sub:
        assert await eventually(lambda: b.is_alive("secure"))
        await b.post("secure", "over tls")
        assert await sub.__anext__() == "over tls"
