"""xraptor-postgres: the ``postgres`` antenna for xraptor (PostgreSQL ``LISTEN`` / ``NOTIFY``).

This module only registers what the plugin offers; the driver module (and asyncpg)
loads when the hook runs, so that ``xraptor plugins`` stays fast and a missing
asyncpg is reported as this plugin's failure, not xraptor's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xraptor

if TYPE_CHECKING:
    from xraptor.plugins import AntennaRegistry

__all__ = ["xraptor_register_antennas"]
__version__ = "0.5.0"


@xraptor.hookimpl
def xraptor_register_antennas(registry: AntennaRegistry) -> None:
    from .antenna import PostgresAntenna

    registry.add(PostgresAntenna)
