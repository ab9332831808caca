"""Routes and the route table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .protocol import MethodType, Request, Response

Handler = Callable[[Request], Awaitable[Response | None]]


class Route:
    """The handlers of one route name of an app; ``as_get`` and friends register them.

    ``app.register(name)`` returns the app's one ``Route`` of that name (as in
    xraptor 0.4, registering a name twice gives the same object). The decorators
    return the function unchanged.
    """

    __slots__ = ("_map", "name")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a route name must be a non-empty str, got {name!r}")
        self.name = name
        self._map: dict[MethodType, Handler] = {}

    def _add(self, method: MethodType, func: Handler) -> Handler:
        if not callable(func):
            raise TypeError(f"the {method.value} handler of {self.name!r} must be callable")
        self._map[method] = func
        return func

    def as_get(self, func: Handler) -> Handler:
        return self._add(MethodType.GET, func)

    def as_post(self, func: Handler) -> Handler:
        return self._add(MethodType.POST, func)

    def as_put(self, func: Handler) -> Handler:
        return self._add(MethodType.PUT, func)

    def as_sub(self, func: Handler) -> Handler:
        return self._add(MethodType.SUB, func)

    def as_unsub(self, func: Handler) -> Handler:
        return self._add(MethodType.UNSUB, func)

    def handlers(self) -> dict[MethodType, Handler]:
        return dict(self._map)

    def get_match_map(self) -> dict[str, Handler]:
        """The 0.4 ``"name:METHOD" -> handler`` map."""
        return {f"{self.name}:{m.value}": f for m, f in self._map.items()}


class Router:
    """The route table a server dispatches with: ``route -> method -> handler``."""

    def __init__(self) -> None:
        self.table: dict[str, dict[MethodType, Handler]] = {}

    def load(self, routes: list[Route]) -> None:
        """Build the table; a later route's handler wins at the same name and method."""
        table: dict[str, dict[MethodType, Handler]] = {}
        for route in routes:
            table.setdefault(route.name, {}).update(route._map)
        self.table = table

    def match(self, method: MethodType, name: str) -> Handler | None:
        methods = self.table.get(name)
        return methods.get(method) if methods is not None else None
