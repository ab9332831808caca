"""0.4's ``xraptor.antenna_implementations.memory``: the same :class:`MemoryAntenna`."""

from ..antennas.memory import MemoryAntenna

__all__ = ["MemoryAntenna"]
