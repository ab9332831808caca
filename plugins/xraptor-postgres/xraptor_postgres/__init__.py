"""xraptor-postgres: the postgres antenna for xraptor.

This module only registers what the plugin offers; the driver module loads when
the hook runs (so that ``xraptor plugins`` stays fast and a missing backend
library is reported as this plugin's failure, not xraptor's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xraptor

if TYPE_CHECKING:
    from xraptor.plugins import AntennaRegistry

__all__ = ["xraptor_register_antennas"]


@xraptor.hookimpl
def xraptor_register_antennas(registry: AntennaRegistry) -> None:
    from .antenna import PostgresAntenna

    registry.add(PostgresAntenna)
