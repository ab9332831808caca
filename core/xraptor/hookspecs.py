"""The pluggy markers and hook specifications of xraptor.

Plugins import :data:`hookimpl` as ``xraptor.hookimpl`` and never import pluggy.
Hooks are called with keyword arguments, so an implementation may accept fewer
arguments than its specification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .plugins import AntennaRegistry, GuardRegistry, MiddlewareRegistry, TransportRegistry
    from .server import XRaptor

PROJECT = "xraptor"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def xraptor_register_antennas(registry: AntennaRegistry) -> None:
    """Offer antenna classes with ``registry.add(AntennaClass)``.

    Each class names itself with its ``name`` class attribute and lists the URL
    schemes it accepts in ``schemes`` (default ``(name,)``); applications then
    select it with ``antenna="<name>"`` or a ``<scheme>://`` URL.
    """


@hookspec
def xraptor_register_middlewares(registry: MiddlewareRegistry) -> None:
    """Offer named middleware factories with ``registry.add(name, factory)``.

    Nothing runs until the application enables a middleware by name with
    ``XRaptor.use_middleware(name, priority=..., **options)``.
    """


@hookspec
def xraptor_register_guards(registry: GuardRegistry) -> None:
    """Offer named connect-guard factories with ``registry.add(name, factory)``.

    ``factory(**options)`` returns ``async def guard(handshake) -> identity``. Nothing
    runs until the application enables a guard by name with
    ``XRaptor.use_guard(name, **options)`` (or ``app.use_guard``).
    """


@hookspec
def xraptor_register_transports(registry: TransportRegistry) -> None:
    """Offer listening transports with ``registry.add(name, listen)``.

    ``listen(app, options)`` binds and returns a listener (see
    :mod:`xraptor.transport`); applications select it with ``XRaptor(...,
    transport="<name>")`` or ``xraptor run --transport <name>``.
    """


@hookspec
def xraptor_startup(server: XRaptor) -> Any:
    """Called when a server starts serving, after its antenna is up.

    May return an awaitable, which the server awaits.
    """


@hookspec
def xraptor_shutdown(server: XRaptor) -> Any:
    """Called when a server stops: after the drain, once its connections are closed,
    before its antenna is closed.

    May return an awaitable, which the server awaits.
    """
