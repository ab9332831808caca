"""What the antenna conformance suites share: the ``antenna_factory`` fixture a
subclass provides, and two antennas made with it, ``antenna`` and ``other`` (another
process on the same backend, as far as the contract goes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from ..antenna import Antenna

AntennaFactory = Callable[[], Antenna]


class AntennaPair:
    """The fixtures of every suite; :meth:`prepare` configures an antenna before it starts."""

    @pytest.fixture
    def antenna_factory(self) -> AntennaFactory:
        raise NotImplementedError(
            "provide an antenna_factory fixture returning a callable that makes a new antenna"
        )

    def prepare(self, antenna: Antenna) -> None:
        """Called with each antenna the suite makes, before it starts."""

    async def _started(self, factory: AntennaFactory) -> Antenna:
        antenna = factory()
        self.prepare(antenna)
        await antenna.start()
        return antenna

    @pytest_asyncio.fixture
    async def antenna(self, antenna_factory: AntennaFactory) -> AsyncIterator[Antenna]:
        antenna = await self._started(antenna_factory)
        try:
            yield antenna
        finally:
            await antenna.close()

    @pytest_asyncio.fixture
    async def other(self, antenna_factory: AntennaFactory) -> AsyncIterator[Antenna]:
        """A second antenna on the same backend: another process, as far as the contract goes."""
        antenna = await self._started(antenna_factory)
        try:
            yield antenna
        finally:
            await antenna.close()
