"""The middleware chain: run before handlers, lower priority first."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .protocol import Request, Response

if TYPE_CHECKING:
    from .connection import Connection

MiddlewareFunc = Callable[[Request, "Connection"], Awaitable[Response | None]]


@dataclass(slots=True)
class MiddlewareConfig:
    priority: int
    pattern: re.Pattern[str] | None
    func: MiddlewareFunc
    name: str = ""


class MiddlewareChain:
    """Priorities are unique; a pattern restricts a middleware to matching routes.

    A middleware returns ``None`` to continue or a :class:`Response` to answer the
    request itself (the handler is skipped).
    """

    def __init__(self) -> None:
        self.items: list[MiddlewareConfig] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(
        self, func: MiddlewareFunc, priority: int, pattern: str | None = None, name: str = ""
    ) -> MiddlewareConfig:
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"middleware priority must be an int, got {priority!r}")
        if not callable(func):
            raise TypeError(f"middleware {func!r} is not callable")
        for item in self.items:
            if item.priority == priority:
                raise ValueError(
                    f"Middleware priority {priority} already registered "
                    f"(by {item.name or getattr(item.func, '__name__', item.func)!s})"
                )
        try:
            compiled = re.compile(pattern) if pattern else None
        except (re.error, TypeError) as error:
            raise ValueError(f"invalid middleware pattern {pattern!r}: {error}") from error
        config = MiddlewareConfig(
            priority, compiled, func, name or getattr(func, "__name__", repr(func))
        )
        self.items.append(config)
        self.items.sort(key=lambda m: m.priority)
        return config

    def clear(self) -> None:
        self.items.clear()

    async def run(self, request: Request, connection: Any) -> Response | None:
        route = request.route
        for item in self.items:
            if item.pattern is not None and not item.pattern.match(route):
                continue
            result = await item.func(request, connection)
            if result is not None:
                if not isinstance(result, Response):
                    raise TypeError(
                        f"middleware {item.name} must return a Response or None, "
                        f"got {type(result).__name__}"
                    )
                return result
        return None
