"""App: what an application registers (routes, middlewares, guards, the antenna) and
what it holds while it serves (streams, rooms).

Every ``XRaptor`` is an app. The registration names work on an instance
(``@app.register("/x").as_post``, ``@app.middleware(priority=1)``, ``@app.on_connect``,
``app.set_antenna(...)``, ``app.get_antenna()``) and, as in xraptor 0.4, on the
class, where they mean the app serving the current request, else the **default
app** (see :mod:`xraptor.context`). Every app serves what was registered on the
default app in addition to its own: its own route handlers, at the same route and
method, win; middlewares of both run in priority order; the default app's guards
run before its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from .antenna import Antenna
from .broadcast import RoomTasks
from .context import current_app, default_app, reset_default_app
from .guards import Guard, GuardList
from .history import HistoryResolver, RoomSettings, room_settings
from .metrics import Metrics
from .middleware import MiddlewareChain, MiddlewareFunc
from .plugins import get_plugins, resolve_antenna
from .presence import PresenceResolver, PresenceTracker
from .protocol import MethodType
from .routing import Handler, Route

if TYPE_CHECKING:
    from .broadcast import Broadcast
    from .connection import Stream

P = ParamSpec("P")
R = TypeVar("R")
G = TypeVar("G", bound=Guard)


class per_app(Generic[P, R]):
    """A method that acts on an app: the instance it is called on, or, called on the
    class, the app serving the current request, else the default app."""

    def __init__(self, method: Callable[Concatenate[App, P], R]) -> None:
        self._method = method
        self.__doc__ = method.__doc__
        self.__name__ = method.__name__

    def __get__(self, app: App | None, owner: type[App]) -> Callable[P, R]:
        method = self._method
        if app is None:

            def on_current_app(*args: P.args, **kwargs: P.kwargs) -> R:
                return method(current_app(), *args, **kwargs)

            return on_current_app

        def on_app(*args: P.args, **kwargs: P.kwargs) -> R:
            return method(app, *args, **kwargs)

        return on_app


class App:
    """The registrations and the live state of one application (see the module doc)."""

    metrics: Metrics

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._middlewares = MiddlewareChain()
        self._guards = GuardList()
        #: the configure_rooms() calls, in order (the last matching one wins)
        self._room_settings: list[RoomSettings] = []
        self._antenna: Antenna | None = None
        self._made_antenna = False
        #: the app most recently started (kept on the default app: 0.4 code calls
        #: ``XRaptor.get_antenna()`` from tasks that serve no request)
        self._last_started: App | None = None
        #: this app's open SUB streams by request_id (the channel each listens to)
        self.streams: dict[str, Stream] = {}
        #: this app's rooms by id
        self.rooms: dict[str, Broadcast] = {}
        #: the rooms' subscribe / forward tasks, which requests wait for
        self.room_tasks = RoomTasks()
        #: which rooms keep presence, and this process's members of them
        self.presence_tracker = PresenceTracker(self.room_tasks)
        self.metrics = Metrics()

    # ----- registration ---------------------------------------------------------

    @per_app
    def register(self, /, name: str) -> Route:
        """The route ``name``; decorate handlers with its ``as_get`` ... ``as_unsub``."""
        route = self._routes.get(name)
        if route is None:
            route = self._routes[name] = Route(name)
        return route

    @per_app
    def middleware(
        self, /, priority: int, pattern: str | None = None
    ) -> Callable[[MiddlewareFunc], MiddlewareFunc]:
        """Decorator: run ``func(request, connection)`` before handlers.

        :param priority: unique within the app; lower runs first
        :param pattern: regex matched against the route (``None``: every route)
        :raises ValueError: on a taken priority or an invalid pattern
        """
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"middleware priority must be an int, got {priority!r}")

        def decorator(func: MiddlewareFunc) -> MiddlewareFunc:
            self._middlewares.add(func, priority, pattern)
            return func

        return decorator

    @per_app
    def use_middleware(
        self, /, name: str, *, priority: int, pattern: str | None = None, **options: Any
    ) -> None:
        """Enable a middleware a plugin offers by name (``xraptor plugins`` lists them)."""
        factory = get_plugins().middlewares.get(name)
        self._middlewares.add(factory(**options), priority, pattern, name=name)

    @per_app
    def on_connect(self, /, guard: G) -> G:
        """Decorator: register ``async def guard(handshake) -> identity``, run before
        the upgrade in registration order (see :class:`~xraptor.Handshake`).

        A guard's non-``None`` result becomes ``handshake.identity`` for the next
        one, the last becomes ``connection.identity``;
        ``raise xraptor.Refuse(status, reason)`` answers that HTTP status instead.
        """
        self._guards.add(guard)
        return guard

    @per_app
    def use_guard(self, /, name: str, **options: Any) -> None:
        """Enable a connect guard a plugin offers by name, after those registered.

        :raises UnknownGuardError: no installed plugin offers ``name``
        """
        factory = get_plugins().guards.get(name)
        guard = factory(**options)
        if not callable(guard):
            raise TypeError(
                f"the factory of guard {name!r} returned {guard!r}, not a guard function"
            )
        self._guards.add(guard, name)

    @per_app
    def configure_rooms(
        self,
        /,
        pattern: str,
        *,
        history_size: int = 0,
        history_ttl: float | None = None,
        presence: bool = False,
        join_leave: bool = False,
    ) -> None:
        """Configure the rooms whose id ``pattern`` (a regex, tried with ``re.match`` as
        middleware patterns are) matches: each keeps its last ``history_size`` messages,
        each for ``history_ttl`` seconds (``None``: until trimmed), and its pushes carry
        ``{"room", "position"}`` headers; a SUB with ``since`` recovers from them.

        With ``presence`` the room knows its members in every process
        (:meth:`Broadcast.presence <xraptor.Broadcast.presence>`); with ``join_leave``
        its members also get a ``{"notice": "join" | "leave"}`` push when a member
        joins or leaves (see :mod:`xraptor.presence`).

        When several calls match a room, the last one wins (the app's own calls over
        the default app's); ``history_size=0`` keeps no history. Read when the app
        starts, as routes are; the antenna must keep history (the memory antenna does)
        and presence, when asked for.

        :raises ValueError: an invalid pattern, size or ttl, ``join_leave`` without
            ``presence``
        :raises RuntimeError: the app is started already
        """
        settings = room_settings(
            pattern,
            history_size=history_size,
            history_ttl=history_ttl,
            presence=presence,
            join_leave=join_leave,
        )
        if self.started:
            raise RuntimeError(
                "configure_rooms() on a started app: room settings are read when the app "
                "starts; configure rooms before start()"
            )
        self._room_settings.append(settings)

    @per_app
    def set_antenna(self, /, antenna: object, **options: Any) -> App:
        """Select the antenna: a name (``"redis"``), a URL, an Antenna class or instance.

        Set on the default app (``XRaptor.set_antenna(...)`` outside a request), it is
        the antenna of every app that selects none of its own.
        """
        if self.running:
            raise RuntimeError("cannot change the antenna of a running server")
        self._antenna = resolve_antenna(antenna, **options)
        self._made_antenna = False
        return self

    @per_app
    def get_antenna(self) -> Antenna:
        """The app's antenna (0.4: ``XRaptor.get_antenna()`` in a handler)."""
        return self.antenna

    @per_app
    def route_matcher(self, /, method: MethodType, name: str) -> Handler | None:
        """The handler registered for ``method`` on route ``name`` (0.4 API)."""
        for routes in self._route_sources():
            handler = routes.get(name)
            found = handler.handlers().get(method) if handler is not None else None
            if found is not None:
                return found
        return None

    @per_app
    def get_metrics(self) -> Metrics:
        """The counters of the app (of the app last started, for the default app)."""
        if self._last_started is not None and not self.running:
            return self._last_started.metrics
        return self.metrics

    @classmethod
    def reset(cls) -> None:
        """Forget the default app: every class-level route, middleware, guard and room."""
        reset_default_app()

    # ----- what an app serves ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return False

    @property
    def started(self) -> bool:
        """Whether the app serves now (natively or through ASGI)."""
        return self.running

    def history_resolver(self) -> HistoryResolver | None:
        """Which rooms keep history (the default app's settings, then the app's own,
        the last matching one winning); ``None`` when none does."""
        resolver = HistoryResolver(
            settings for source in self._sources() for settings in source._room_settings
        )
        return resolver if resolver.keeps_history else None

    def presence_resolver(self) -> PresenceResolver | None:
        """Which rooms keep presence (as :meth:`history_resolver`); ``None`` when none does."""
        resolver = PresenceResolver(
            settings for source in self._sources() for settings in source._room_settings
        )
        return resolver if resolver.keeps_presence else None

    @property
    def antenna(self) -> Antenna:
        """The app's own antenna, else the default app's, else a memory antenna."""
        own = self._antenna
        if own is not None:
            return own
        default = default_app()
        if default is not self:
            if default._antenna is not None and not default._made_antenna:
                return default._antenna
        else:
            last = self._last_started
            if last is not None and last._antenna is not None and last._antenna.state != "closed":
                return last._antenna
        self._antenna = resolve_antenna("memory")
        self._made_antenna = True
        return self._antenna

    def guards(self) -> list[tuple[str, Guard]]:
        """The connect guards this app runs, in order: the default app's, then its own."""
        return [guard for source in self._sources() for guard in source._guards]

    def routes(self) -> list[Route]:
        """The routes this app serves: the default app's, then its own (which win)."""
        return [route for routes in reversed(self._route_sources()) for route in routes.values()]

    def middleware_chain(self) -> MiddlewareChain:
        """The middlewares this app runs: its own and the default app's, by priority."""
        chain = MiddlewareChain()
        chain.items = sorted(
            (item for source in self._sources() for item in source._middlewares.items),
            key=lambda item: item.priority,
        )
        return chain

    def _sources(self) -> Iterable[App]:
        default = default_app()
        return (self,) if default is self else (default, self)

    def _route_sources(self) -> list[dict[str, Route]]:
        """Route tables in lookup order: the app's own first."""
        return [source._routes for source in reversed(tuple(self._sources()))]
