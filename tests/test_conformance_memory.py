"""The antenna conformance suite against the built-in memory antenna.

The memory antenna has no backend that could stop, so it provides no ``backend_fault``
fixture and the suite's fault tests skip (saying so); the variants in
``test_conformance_catches.py`` run them on a simulated backend.
"""

from __future__ import annotations

import pytest

from xraptor import Antenna
from xraptor.antennas import MemoryAntenna
from xraptor.testing import AntennaConformance, ResourceCounter


def _memory_subscriptions(antenna: Antenna) -> dict[str, int]:
    """The channels of the process-wide memory bus that ``antenna`` is subscribed to."""
    bus = MemoryAntenna._bus
    return {"subscriptions": sum(antenna in watchers for watchers in bus.values())}


class TestMemoryAntenna(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self) -> type[MemoryAntenna]:
        return MemoryAntenna

    @pytest.fixture
    def antenna_resources(self) -> ResourceCounter:
        return _memory_subscriptions
