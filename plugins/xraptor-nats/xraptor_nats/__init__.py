"""xraptor-nats: the ``nats`` antenna and the ``nats-forward`` middleware for xraptor.

Only the hook implementations live here, so that discovering the plugin stays
cheap: nats-py is imported when a hook runs.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import xraptor

if TYPE_CHECKING:
    from xraptor.plugins import AntennaRegistry, MiddlewareRegistry

__version__ = "0.5.0"


@xraptor.hookimpl
def xraptor_register_antennas(registry: AntennaRegistry) -> None:
    from .antenna import NatsAntenna

    registry.add(NatsAntenna)


@xraptor.hookimpl
def xraptor_register_middlewares(registry: MiddlewareRegistry) -> None:
    from .forward import nats_forward

    registry.add("nats-forward", nats_forward)


@xraptor.hookimpl
def xraptor_shutdown() -> Awaitable[None]:
    from .forward import close_all

    return close_all()
