"""A third-party antenna named "postgres" that accepts libpq's URLs.

libpq takes both ``postgres://`` and ``postgresql://``; the antenna declares both in
``schemes``, so an application selects it with either URL. It is the memory antenna
underneath: the core tests need no PostgreSQL server.
"""

from __future__ import annotations

from typing import Any, ClassVar

import xraptor


@xraptor.hookimpl
def xraptor_register_antennas(registry: Any) -> None:
    from xraptor.antennas import MemoryAntenna

    class PostgresAntenna(MemoryAntenna):
        name: ClassVar[str] = "postgres"
        schemes: ClassVar[tuple[str, ...]] = ("postgres", "postgresql")

        @classmethod
        def options_from_url(cls, url: str) -> dict[str, Any]:
            return {"dsn": url}

    registry.add(PostgresAntenna)
