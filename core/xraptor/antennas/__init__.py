"""Antenna implementations.

``MemoryAntenna`` is built in. ``RedisAntenna`` and ``NatsAntenna`` (the xraptor
0.4 names) resolve to the classes of the installed ``xraptor-redis`` and
``xraptor-nats`` plugins; without the plugin, the error names the package.
"""

from __future__ import annotations

from typing import Any

from ..antenna import Antenna
from .memory import MemoryAntenna

IAntenna = Antenna

__all__ = [
    "Antenna",
    "IAntenna",
    "MemoryAntenna",
    "MissingPluginError",
    "NatsAntenna",
    "RedisAntenna",
]

_PLUGIN_CLASSES = {"RedisAntenna": "redis", "NatsAntenna": "nats"}


class MissingPluginError(ImportError):
    """The antenna needs a plugin distribution that is not installed."""


def __getattr__(attr: str) -> Any:
    name = _PLUGIN_CLASSES.get(attr)
    if name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    from ..plugins import UnknownAntennaError, get_plugins

    try:
        return get_plugins().antenna_class(name)
    except UnknownAntennaError:
        raise MissingPluginError(
            f"xraptor.antennas.{attr} needs the xraptor-{name} plugin: pip install xraptor-{name}"
            f" (or pip install 'xraptor[{name}]')"
        ) from None
