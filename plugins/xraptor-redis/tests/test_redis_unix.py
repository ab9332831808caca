"""A ``unix://`` URL selects the Redis antenna, which then talks over the socket."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import REDIS_BINARY

from xraptor.plugins import resolve_antenna
from xraptor.testing import eventually
from xraptor_redis.antenna import RedisAntenna


@pytest.fixture
def unix_redis() -> Iterator[str]:
    if REDIS_BINARY is None:
        pytest.skip("needs the redis-server binary")
    # a short folder: a socket path must fit in sun_path (about 100 bytes)
    with tempfile.TemporaryDirectory(prefix="xr-", dir="/tmp") as folder:
        path = Path(folder) / "redis.sock"
        process = subprocess.Popen(
            [REDIS_BINARY, "--port", "0", "--unixsocket", str(path), "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.socket(socket.AF_UNIX) as probe:
                        probe.connect(str(path))
                    break
                except OSError:
                    assert process.poll() is None, "redis-server on a unix socket did not start"
                    assert time.monotonic() < deadline, "redis-server did not listen on its socket"
                    time.sleep(0.02)
            yield f"unix://{path}?db=0"
        finally:
            process.kill()
            process.wait(5)


async def test_unix_url_selects_the_antenna_and_uses_the_socket(unix_redis: str) -> None:
    antenna = resolve_antenna(unix_redis, publish_timeout=2.0)
    assert isinstance(antenna, RedisAntenna) and antenna.url == unix_redis
    other = RedisAntenna(url=unix_redis)
    async with antenna, other:
        async with antenna.subscribe("local") as sub:
            assert await eventually(lambda: other.is_alive("local"))
            await other.post("local", "through the socket")
            assert await sub.__anext__() == "through the socket"
        assert antenna.describe()["state"] == "up"
