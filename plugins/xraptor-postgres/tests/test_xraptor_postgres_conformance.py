"""The xraptor antenna conformance suite, run against the postgres antenna."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Backend
from xraptor import Antenna
from xraptor.testing import AntennaConformance, ResourceCounter

from xraptor_postgres.antenna import PostgresAntenna


class TestPostgresAntenna(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self, xraptor_postgres_backend: Backend) -> Callable[[], Antenna]:
        """Makes a new, unstarted antenna; two of them behave like two processes."""
        return lambda: PostgresAntenna(url=xraptor_postgres_backend.url)

    @pytest.fixture
    def antenna_resources(self, xraptor_postgres_backend: Backend) -> ResourceCounter:
        """Optional: what one antenna holds at the backend (every count 0 after close)."""
        return xraptor_postgres_backend.counts

    # Without backend_fault the fault tests skip, saying why: only an antenna without
    # a backend may go without. With the fixture of conftest.py:
    #
    # @pytest.fixture
    # def backend_fault(self, xraptor_postgres_fault: BackendFault) -> BackendFault:
    #     return xraptor_postgres_fault
    #
    # The suite's bounds fit most backends; raise them for a slow one:
    # unavailable_within = 5  # seconds for post() to raise AntennaUnavailable when down
    # recovery_within = 10  # seconds for state to go down, then up again
    # release_within = 5  # seconds for a release to show after unsubscribe or close
