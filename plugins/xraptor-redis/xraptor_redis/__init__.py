"""xraptor-redis: the Redis antenna and the ``redis-rate-limit`` middleware for xraptor.

This module stays tiny: it only registers what the plugin offers. The driver
modules (which import ``redis``) load when the hooks run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xraptor

if TYPE_CHECKING:
    from xraptor.plugins import AntennaRegistry, MiddlewareRegistry

__all__ = ["xraptor_register_antennas", "xraptor_register_middlewares"]


@xraptor.hookimpl
def xraptor_register_antennas(registry: AntennaRegistry) -> None:
    from .antenna import RedisAntenna

    registry.add(RedisAntenna)


@xraptor.hookimpl
def xraptor_register_middlewares(registry: MiddlewareRegistry) -> None:
    from .ratelimit import redis_rate_limit

    registry.add("redis-rate-limit", redis_rate_limit)
