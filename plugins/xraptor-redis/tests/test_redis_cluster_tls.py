"""A ``rediss+cluster://`` URL: the cluster antenna talks TLS to every node."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import LocalCluster, make_cluster

from xraptor.testing import self_signed_cert
from xraptor_redis.antenna import RedisAntenna
from xraptor_redis.cluster_antenna import RedisClusterAntenna


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl binary")
    yield from make_cluster(tmp_path, tls=self_signed_cert(tmp_path))


async def test_tls_cluster_delivers(tls_cluster: LocalCluster) -> None:
    assert tls_cluster.url.startswith("rediss+cluster://")
    async with (
        RedisAntenna(url=tls_cluster.url) as antenna,
        RedisAntenna(url=tls_cluster.url) as other,
    ):
        assert isinstance(antenna, RedisClusterAntenna)
        rooms = [f"tls-{i}" for i in range(6)]  # spread over the masters
        subs = [antenna.subscribe(room) for room in rooms]
        await asyncio.gather(*(sub.open() for sub in subs))
        for room in rooms:
            assert await other.is_alive(room)
            await other.post(room, f"secret {room}")
        for room, sub in zip(rooms, subs, strict=True):
            assert await asyncio.wait_for(sub.__anext__(), 5) == f"secret {room}"
            await sub.aclose()
        assert set(antenna.describe()["masters"].values()) == {"up"}
