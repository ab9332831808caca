"""Connect guards: ``async def guard(handshake) -> identity`` run before the upgrade.

``@XRaptor.on_connect`` registers a guard for every server (the 0.4-style default
app); ``@app.on_connect`` for one server, which runs the class-level guards first,
then its own. ``use_guard(name, **options)`` enables a guard a plugin offers,
on the class or on an app in the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .handshake import Handshake

#: a connect guard: returns the identity (or ``None`` to keep the previous one),
#: raises :class:`~xraptor.Refuse` to answer with an HTTP error
Guard = Callable[["Handshake"], Awaitable[object]]

#: what a plugin registers: ``factory(**options)`` returns a guard
GuardFactory = Callable[..., Guard]

G = TypeVar("G", bound=Guard)
B = TypeVar("B")


class GuardList:
    """Guards in registration order, each with the name logs call it by."""

    def __init__(self) -> None:
        self._items: list[tuple[str, Guard]] = []

    def add(self, guard: Guard, name: str = "") -> None:
        if not callable(guard):
            raise TypeError(
                f"a connect guard must be an async function (handshake) -> identity, got {guard!r}"
            )
        self._items.append((name or getattr(guard, "__qualname__", repr(guard)), guard))

    def clear(self) -> None:
        self._items.clear()

    def __iter__(self) -> Iterator[tuple[str, Guard]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class HasGuards(Protocol):
    """An app class with class-level guards and per-instance guards."""

    _class_guards: ClassVar[GuardList]
    _app_guards: GuardList


class PerApp(Generic[B]):
    """A descriptor: on the class it acts on the class-level guards, on an app on its own.

    :param bind: makes the attribute's value from the guard list it acts on
    """

    def __init__(self, bind: Callable[[GuardList], B]) -> None:
        self._bind = bind

    def __get__(self, app: HasGuards | None, owner: type[HasGuards]) -> B:
        return self._bind(owner._class_guards if app is None else app._app_guards)


class OnConnect:
    """``@XRaptor.on_connect`` / ``@app.on_connect``: register a connect guard.

    The guard is ``async def guard(handshake: xraptor.Handshake) -> object``; guards
    run in registration order before the upgrade. A guard's non-``None`` result
    becomes ``handshake.identity`` for the next one, the last becomes
    ``connection.identity``. ``raise xraptor.Refuse(status, reason)`` answers that
    HTTP status instead of opening the WebSocket.
    """

    def __init__(self, guards: GuardList) -> None:
        self._guards = guards

    def __call__(self, guard: G) -> G:
        self._guards.add(guard)
        return guard


class UseGuard:
    """``XRaptor.use_guard(name, **options)`` / ``app.use_guard(...)``: enable a guard
    a plugin offers by name (``xraptor plugins`` lists them), after those already
    registered.

    :raises UnknownGuardError: no installed plugin offers ``name``
    """

    def __init__(self, guards: GuardList) -> None:
        self._guards = guards

    def __call__(self, name: str, **options: Any) -> None:
        from .plugins import get_plugins

        factory = get_plugins().guards.get(name)
        guard = factory(**options)
        if not callable(guard):
            raise TypeError(
                f"the factory of guard {name!r} returned {guard!r}, not a guard function"
            )
        self._guards.add(guard, name)
