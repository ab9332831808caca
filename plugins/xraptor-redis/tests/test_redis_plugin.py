"""The plugin is found through its entry point once installed."""

from __future__ import annotations

import importlib.metadata

import pytest

import xraptor
from xraptor.plugins import Plugins, resolve_antenna
from xraptor_redis.antenna import RedisAntenna


def test_entry_point_is_declared() -> None:
    points = importlib.metadata.entry_points(group="xraptor")
    assert any(ep.name == "redis" and ep.value == "xraptor_redis" for ep in points)


def test_discovered_by_name() -> None:
    plugins = Plugins()
    assert plugins.antenna_class("redis") is RedisAntenna
    info = plugins.info["redis"]
    assert info.distribution == "xraptor-redis"
    assert info.antennas == ["redis"]
    assert sorted(info.schemes) == sorted(
        ["redis", "rediss", "unix", "redis+cluster", "rediss+cluster"]
    )
    assert info.middlewares == ["redis-rate-limit"]
    assert info.error is None


def test_global_registry_and_04_name() -> None:
    assert xraptor.get_plugins().antenna_class("redis") is RedisAntenna
    assert xraptor.antennas.RedisAntenna is RedisAntenna


def test_declares_its_url_schemes() -> None:
    # the core knows no Redis scheme: the antenna claims redis-py's three
    assert RedisAntenna.schemes == ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
    for scheme in RedisAntenna.schemes:
        assert xraptor.get_plugins().antennas.for_scheme(scheme) is RedisAntenna


def test_selected_by_url_and_name() -> None:
    by_url = resolve_antenna("redis://10.1.2.3:6380/2")
    assert isinstance(by_url, RedisAntenna) and by_url.url == "redis://10.1.2.3:6380/2"
    tls = resolve_antenna("rediss://example.invalid:6380/0", publish_timeout=1)
    assert isinstance(tls, RedisAntenna) and tls.url.startswith("rediss://")
    assert tls.publish_timeout == 1.0
    socket = resolve_antenna("unix:///run/redis/redis.sock?db=1")
    assert isinstance(socket, RedisAntenna) and socket.url == "unix:///run/redis/redis.sock?db=1"
    assert isinstance(resolve_antenna("REDISS://example.invalid:6380/0"), RedisAntenna)
    by_name = resolve_antenna("redis", url="redis://127.0.0.1:1/0")
    assert isinstance(by_name, RedisAntenna) and by_name.url == "redis://127.0.0.1:1/0"


def test_defaults_and_set_config() -> None:
    antenna = RedisAntenna()
    assert antenna.url == "redis://127.0.0.1:6379/0"
    assert antenna.publish_timeout == 2.0
    assert antenna.pool_size == 4
    try:
        RedisAntenna.set_config({"url": "redis://127.0.0.1:7000/1", "publish_timeout": 0.5})
        configured = RedisAntenna()
        assert configured.url == "redis://127.0.0.1:7000/1"
        assert configured.publish_timeout == 0.5
        assert RedisAntenna(url="redis://127.0.0.1:7001/0").url == "redis://127.0.0.1:7001/0"
    finally:
        RedisAntenna.set_config({})


@pytest.mark.parametrize("option", ["publish_timeout", "reconnect_max_delay", "pool_size"])
def test_bad_options_are_refused(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        RedisAntenna(**{option: 0})
    with pytest.raises(ValueError, match=option):
        RedisAntenna(**{option: "soon"})


async def test_unreachable_at_start_raises_unavailable() -> None:
    antenna = RedisAntenna(url="redis://127.0.0.1:1/0", publish_timeout=0.5, subscribe_timeout=0.5)
    with pytest.raises(xraptor.AntennaUnavailable):
        await antenna.start()
    assert antenna.state == "new"


def test_describe_hides_credentials() -> None:
    antenna = RedisAntenna(url="redis://user:secret@10.0.0.5:6379/1")
    description = antenna.describe()
    assert description["name"] == "redis"
    assert description["url"] == "redis://10.0.0.5:6379/1"
    assert "secret" not in str(description)
    assert description["reconnects"] == 0 and description["pending_publishes"] == 0
