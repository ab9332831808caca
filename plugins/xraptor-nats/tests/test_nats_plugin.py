"""The plugin is found through its entry point once installed."""

from __future__ import annotations

import importlib.metadata

import pytest

import xraptor
from xraptor.plugins import Plugins, resolve_antenna
from xraptor_nats.antenna import NatsAntenna


def test_entry_point_declared() -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="xraptor")}
    assert names.get("nats") == "xraptor_nats"


def test_discovered_by_name() -> None:
    plugins = Plugins()
    assert plugins.antenna_class("nats") is NatsAntenna
    assert "nats-forward" in plugins.middlewares.names()
    info = plugins.info["nats"]
    assert info.distribution == "xraptor-nats"
    assert info.antennas == ["nats"] and info.middlewares == ["nats-forward"]
    assert info.schemes == ["nats", "tls"]
    assert info.error is None


def test_process_wide_names() -> None:
    assert xraptor.get_plugins().antenna_class("nats") is NatsAntenna
    assert xraptor.antennas.NatsAntenna is NatsAntenna


def test_declares_its_url_schemes() -> None:
    # the core knows no NATS scheme: the antenna claims nats:// and tls://
    assert NatsAntenna.schemes == ("nats", "tls")
    for scheme in NatsAntenna.schemes:
        assert xraptor.get_plugins().antennas.for_scheme(scheme) is NatsAntenna


def test_selected_by_url() -> None:
    for url in ("nats://10.0.0.1:4222", "tls://nats.example:4222"):
        antenna = resolve_antenna(url)
        assert isinstance(antenna, NatsAntenna)
        assert antenna.servers == [url]
    antenna = resolve_antenna("nats", servers=["nats://a:1", "nats://b:2"], publish_timeout=1)
    assert isinstance(antenna, NatsAntenna)
    assert antenna.servers == ["nats://a:1", "nats://b:2"] and antenna.publish_timeout == 1.0


def test_set_config_the_04_way() -> None:
    try:
        NatsAntenna.set_config({"servers": "nats://cfg:4222", "subject_prefix": "app.x"})
        antenna = NatsAntenna()
        assert antenna.servers == ["nats://cfg:4222"] and antenna.subject_prefix == "app.x"
        assert NatsAntenna(servers="nats://kw:1").servers == ["nats://kw:1"]
    finally:
        NatsAntenna.set_config({})
    assert NatsAntenna().servers == ["nats://127.0.0.1:4222"]
    assert NatsAntenna().subject_prefix == "xraptor" and NatsAntenna().publish_timeout == 2.0


@pytest.mark.parametrize(
    "options",
    [
        {"subject_prefix": "a.*"},
        {"subject_prefix": "a..b"},
        {"subject_prefix": "a b"},
        {"subject_prefix": ">"},
        {"subject_prefix": ""},
        {"publish_timeout": 0},
        {"publish_timeout": "2"},
        {"servers": []},
        {"servers": 3},
    ],
)
def test_bad_options_refused(options: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        NatsAntenna(**options)


def test_credentials_are_not_shown() -> None:
    antenna = NatsAntenna(servers="nats://user:s3cret@host:4222,nats://tok@other:1,nats://plain:2")
    text = repr(antenna.describe())
    assert "s3cret" not in text and "tok@" not in text and "plain:2" in text
