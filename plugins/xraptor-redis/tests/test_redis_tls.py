"""A ``rediss://`` URL selects the Redis antenna, which then talks TLS to the server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import REDIS_BINARY, _free_port

from xraptor import AntennaUnavailable
from xraptor.plugins import resolve_antenna
from xraptor.testing import eventually, self_signed_cert
from xraptor_redis.antenna import RedisAntenna


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    openssl = shutil.which("openssl")
    if REDIS_BINARY is None or openssl is None:
        pytest.skip("needs the redis-server and openssl binaries")
    cert, key = self_signed_cert(tmp_path)
    port = _free_port()
    process = subprocess.Popen(
        [REDIS_BINARY, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, "redis-server with TLS did not start"
                assert time.monotonic() < deadline, "redis-server with TLS did not listen"
                time.sleep(0.02)
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    finally:
        process.kill()
        process.wait(5)


async def test_rediss_url_selects_the_antenna_and_speaks_tls(tls_redis: str) -> None:
    antenna = resolve_antenna(tls_redis, publish_timeout=2.0)
    assert isinstance(antenna, RedisAntenna)
    other = RedisAntenna(url=tls_redis)
    async with antenna, other:
        async with antenna.subscribe("secure") as sub:
            assert await eventually(lambda: other.is_alive("secure"))
            await other.post("secure", "över TLS")
            assert await sub.__anext__() == "över TLS"
        assert antenna.describe()["state"] == "up"


async def test_plain_redis_url_against_a_tls_port_is_unavailable(tls_redis: str) -> None:
    plain = tls_redis.replace("rediss://", "redis://").split("?")[0]
    antenna = RedisAntenna(url=plain, publish_timeout=0.5, subscribe_timeout=0.5)
    with pytest.raises(AntennaUnavailable):
        await antenna.start()
    await antenna.close()
