"""Fixtures of the xraptor-postgres tests: the backend the conformance suite runs against."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from xraptor import Antenna

from xraptor_postgres import antenna as driver


@dataclass
class Backend:
    """What the tests know of the backend: its URL, and what an antenna holds there."""

    url: str

    def counts(self, antenna: Antenna) -> dict[str, int]:
        """What ``antenna`` holds at the backend, counted at the backend.

        TODO: with a real server, ask it (its client list, by a connection name the
        antenna factory sets): ``{"connections": ..., "subscriptions": ...}``.
        """
        watching = sum(antenna in watchers for watchers in driver._BUS.values())
        return {"subscriptions": watching}


@pytest.fixture
def xraptor_postgres_backend() -> Iterator[Backend]:
    """A private backend the tests own.

    TODO: start a server on a free port (a subprocess), yield its URL, stop it after.
    """
    yield Backend(url="postgres://localhost")


# The fault tests need a way to take the backend away and bring it back at the same
# address (kill and restart the private server). Provide it, then return it from the
# test class's ``backend_fault`` fixture (see the test module):
#
# from xraptor.testing import BackendFault
#
#
# @pytest.fixture
# def xraptor_postgres_fault(xraptor_postgres_backend: Backend) -> BackendFault:
#     return BackendFault(stop=xraptor_postgres_backend.kill, start=xraptor_postgres_backend.start)
