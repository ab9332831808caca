"""The history capability's conformance suite against the built-in memory antenna."""

import pytest

from xraptor.antennas import MemoryAntenna
from xraptor.testing import HistoryConformance


class TestMemoryAntennaHistory(HistoryConformance):
    @pytest.fixture
    def antenna_factory(self):  # type: ignore[no-untyped-def]
        return MemoryAntenna
