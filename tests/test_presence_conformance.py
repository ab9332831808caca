"""The presence capability's conformance suite, run on the memory antenna."""

from __future__ import annotations

import pytest

from xraptor.antennas import MemoryAntenna
from xraptor.testing import PresenceConformance


class TestMemoryAntennaPresence(PresenceConformance):
    @pytest.fixture
    def antenna_factory(self) -> type[MemoryAntenna]:
        return MemoryAntenna
