"""xraptor: fast as a websocket, easy as HTTP."""

from . import antennas
from .antenna import Antenna, AntennaError, AntennaUnavailable, Subscription
from .hookspecs import hookimpl
from .plugins import UnknownAntennaError, UnknownMiddlewareError, get_plugins

__all__ = [
    "Antenna",
    "AntennaError",
    "AntennaUnavailable",
    "Subscription",
    "UnknownAntennaError",
    "UnknownMiddlewareError",
    "antennas",
    "get_plugins",
    "hookimpl",
]
