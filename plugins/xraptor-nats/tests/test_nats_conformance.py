"""The antenna contract, run unchanged against a real nats-server."""

from __future__ import annotations

import pytest

from xraptor.testing import AntennaConformance
from xraptor_nats.antenna import NatsAntenna


class TestNatsConformance(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self, nats_url: str):  # type: ignore[no-untyped-def]
        return lambda: NatsAntenna(servers=nats_url)
