"""xraptor: fast as a websocket, easy as HTTP."""

from . import antennas
from ._version import __version__
from .antenna import (
    Antenna,
    AntennaError,
    AntennaUnavailable,
    Gap,
    MessageTooLarge,
    Subscription,
)
from .broadcast import Broadcast
from .client import Client, ClientError
from .client_reconnect import ConnectionLost, Reconnect
from .connection import Connection
from .handshake import Handshake, Refuse
from .hookspecs import hookimpl
from .hub import Listener
from .metrics import Metrics
from .plugins import (
    UnknownAntennaError,
    UnknownGuardError,
    UnknownMiddlewareError,
    UnknownSchemeError,
    get_plugins,
)
from .protocol import ErrorCode, MethodType, Request, RequestError, Response, error_response
from .server import XRaptor

__all__ = [
    "Antenna",
    "AntennaError",
    "AntennaUnavailable",
    "Broadcast",
    "Client",
    "ClientError",
    "Connection",
    "ConnectionLost",
    "ErrorCode",
    "Gap",
    "Handshake",
    "Listener",
    "MessageTooLarge",
    "MethodType",
    "Metrics",
    "Reconnect",
    "Refuse",
    "Request",
    "RequestError",
    "Response",
    "Subscription",
    "UnknownAntennaError",
    "UnknownGuardError",
    "UnknownMiddlewareError",
    "UnknownSchemeError",
    "XRaptor",
    "__version__",
    "antennas",
    "error_response",
    "get_plugins",
    "hookimpl",
]
