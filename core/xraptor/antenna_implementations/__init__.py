"""0.4's ``xraptor.antenna_implementations``: aliases of :mod:`xraptor.antennas`.

``RedisAntenna`` and ``NatsAntenna`` resolve to the installed plugins' classes, as
``xraptor.antennas.RedisAntenna`` does (without the plugin, the error names it).
"""

from typing import Any

from .. import antennas
from ..antennas import MemoryAntenna

__all__ = ["MemoryAntenna"]


def __getattr__(attr: str) -> Any:
    return getattr(antennas, attr)
