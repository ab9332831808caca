"""Connect guards: ``async def guard(handshake) -> identity`` run before the upgrade.

``@XRaptor.on_connect`` registers a guard on the default app, which every server
runs; ``@app.on_connect`` on one app, which runs the default app's guards first,
then its own. ``use_guard(name, **options)`` enables a guard a plugin offers, on
the class or on an app in the same way (see :class:`xraptor.app.App`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

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
