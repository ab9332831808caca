"""The plugin is found through its entry point once installed, and its options are checked."""

from __future__ import annotations

import importlib.metadata
import ssl

import pytest

import xraptor
from xraptor.plugins import Plugins, resolve_antenna
from xraptor_postgres.antenna import PostgresAntenna
from xraptor_postgres.config import redact


def test_entry_point_declared() -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="xraptor")}
    assert names.get("postgres") == "xraptor_postgres"


def test_discovered_by_name() -> None:
    plugins = Plugins()
    assert plugins.antenna_class("postgres") is PostgresAntenna
    info = plugins.info["postgres"]
    assert info.distribution == "xraptor-postgres"
    assert info.antennas == ["postgres"]
    assert info.schemes == ["postgres", "postgresql"]
    assert info.error is None


def test_selected_by_either_libpq_scheme() -> None:
    for url in ("postgres://app@db.example:5432/chat", "postgresql://app@db.example/chat"):
        antenna = resolve_antenna(url)
        assert isinstance(antenna, PostgresAntenna)
        assert antenna.url == url
    antenna = resolve_antenna("postgres", url="postgresql://h/db", publish_timeout=1)
    assert isinstance(antenna, PostgresAntenna) and antenna.publish_timeout == 1.0


def test_defaults_and_set_config_the_04_way() -> None:
    antenna = PostgresAntenna()
    settings = antenna.settings
    assert settings.url == "postgresql://127.0.0.1:5432/postgres"
    assert (settings.publish_timeout, settings.connect_timeout) == (2.0, 2.0)
    assert (settings.reconnect_min_delay, settings.reconnect_max_delay) == (0.05, 5.0)
    assert settings.prefix == "xraptor" and settings.application_name == "xraptor"
    assert settings.max_message_size == 1024 * 1024 and settings.ssl is None
    try:
        PostgresAntenna.set_config({"url": "postgresql://cfg/db", "channel_prefix": "app1"})
        configured = PostgresAntenna()
        assert configured.url == "postgresql://cfg/db" and configured.prefix == "app1"
        assert PostgresAntenna(url="postgres://kw/db").url == "postgres://kw/db"
    finally:
        PostgresAntenna.set_config({})
    assert PostgresAntenna(ssl=ssl.create_default_context()).settings.ssl is not None


@pytest.mark.parametrize(
    "options",
    [
        {"url": "redis://127.0.0.1:6379"},
        {"url": 5432},
        {"ssl": "sometimes"},
        {"ssl": 1},
        {"channel_prefix": "Upper"},
        {"channel_prefix": "x" * 31},
        {"channel_prefix": "a-b"},
        {"channel_prefix": ""},
        {"publish_timeout": 0},
        {"publish_timeout": "2"},
        {"connect_timeout": -1},
        {"max_message_size": 0},
        {"max_message_size": 1.5},
        {"application_name": "bad\nname"},
        {"connect_options": "password=x"},
    ],
)
def test_bad_options_are_refused_saying_which(options: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)) as refused:
        PostgresAntenna(**options)
    key = next(iter(options))
    assert key in str(refused.value) or "postgres://" in str(refused.value)


def test_passwords_are_not_shown() -> None:
    url = "postgresql://app:s3cret@db.example:5432/chat?password=other&sslmode=require"
    assert redact(url) == "postgresql://app@db.example:5432/chat?password=***&sslmode=require"
    text = repr(PostgresAntenna(url=url).describe())
    assert "s3cret" not in text and "other" not in text and "db.example:5432" in text


async def test_an_unreachable_server_fails_start_with_antenna_unavailable() -> None:
    from pg_support import free_port

    antenna = PostgresAntenna(url=f"postgresql://127.0.0.1:{free_port()}/x", connect_timeout=1)
    with pytest.raises(xraptor.AntennaUnavailable, match="cannot connect to PostgreSQL"):
        await antenna.start()
    await antenna.close()
