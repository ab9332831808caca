"""The antenna conformance suite against the built-in memory antenna."""

import pytest

from xraptor.antennas import MemoryAntenna
from xraptor.testing import AntennaConformance


class TestMemoryAntenna(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self):  # type: ignore[no-untyped-def]
        return MemoryAntenna
