"""Which app a class-level call means: the app serving the current request, else the default app.

``XRaptor.get_antenna()``, ``XRaptor.register(...)``, ``Broadcast.get(room)`` and the
other names of the 0.4 class-level API act on an app. Called from inside a handler,
a middleware or a connect guard, they mean the app serving that request (a context
variable the server sets for each connection); anywhere else, the **default app**,
which every app also serves (see :class:`xraptor.app.App`).

The core's process-wide mutable state is, in full:

* the default app, here;
* the installed plugins (:func:`xraptor.plugins.get_plugins`), found once per process;
* the memory antenna's bus (``MemoryAntenna._bus``), room histories
  (``MemoryAntenna._histories``) and presence (``MemoryAntenna._presence``), which
  stand in for a broker every memory antenna of the process shares;
* the class-wide options of the 0.4 ``Antenna.set_config`` API (``Antenna._config``).

Everything else (routes, middlewares, guards, rooms, streams, antennas) belongs to an
app instance.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App

_current: ContextVar[App | None] = ContextVar("xraptor_current_app", default=None)
_default: App | None = None
_factory: Callable[[], App] | None = None


def current_app() -> App:
    """The app serving the current request, else the default app."""
    app = _current.get()
    return app if app is not None else default_app()


def serving(app: App) -> None:
    """Make ``app`` the current app of this task and of the tasks it starts."""
    _current.set(app)


def default_app() -> App:
    """The app of the 0.4 class-level API, made on first use."""
    global _default
    if _default is None:
        if _factory is None:
            raise RuntimeError("import xraptor before using its default app")
        _default = _factory()
    return _default


def set_default_factory(factory: Callable[[], App]) -> None:
    """Called once by :mod:`xraptor.server`: how to make the default app."""
    global _factory
    _factory = factory


def reset_default_app() -> None:
    """Forget the default app and everything registered on it (tests)."""
    global _default
    _default = None
