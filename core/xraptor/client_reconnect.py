"""What a reconnecting :class:`xraptor.Client` is told to do, and how it says it failed.

:class:`Reconnect` is the policy (exponential backoff with full jitter, a bound on
the attempts), :class:`ConnectionLost` the error of whatever could not survive a
dropped connection: a request in flight, a SUB being entered, and every stream once
the client gave up reconnecting. The reconnection itself is the client's
(:mod:`xraptor.client`).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal

from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = ["ConnectionLost", "Reconnect", "State", "Token", "resolve_token"]

#: a bearer token, or a function (sync or async) called on every (re)connect for one
Token = str | Callable[[], str | Awaitable[str]]

#: what :attr:`xraptor.Client.state` says: not connected yet, connected, the connection
#: dropped and the client is reconnecting, closed (by ``close()``, or it gave up)
State = Literal["new", "open", "reconnecting", "closed"]

#: handshake refusals worth another attempt: the server may accept later (408 and 429
#: say so; 5xx: overloaded, draining for a deploy, a proxy without a backend)
_TRANSIENT_STATUSES = {HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS}


class ConnectionLost(ConnectionClosed):
    """The connection dropped (or the client gave up reconnecting) before this finished.

    Raised by a request that was in flight when a reconnecting client's connection
    dropped (the server may or may not have handled it: nothing is retried), by a
    ``subscribe()`` being entered then, by requests waiting for a reconnection that
    was given up or closed, and by every stream's iteration once the client gave up.
    A subclass of websockets' :class:`~websockets.exceptions.ConnectionClosed`, which
    a client without ``reconnect`` raises in the same places; ``__cause__`` is the
    underlying error.
    """

    def __init__(self, message: str, cause: ConnectionClosed | None = None) -> None:
        super().__init__(
            cause.rcvd if cause is not None else None,
            cause.sent if cause is not None else None,
            cause.rcvd_then_sent if cause is not None else None,
        )
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a :class:`xraptor.Client` reconnects (``Client(url, reconnect=Reconnect(...))``;
    ``reconnect=True`` takes these defaults).

    Before attempt ``n`` (0 for the first after a drop) the client waits a random time
    between 0 and ``min(max_delay, initial_delay * 2 ** n)`` seconds ("full jitter":
    clients dropped together do not come back together).

    :param initial_delay: seconds; the bound of the first wait
    :param max_delay: seconds; the bound no wait exceeds
    :param max_attempts: attempts after one drop before giving up; ``None``: never give up
    :raises ValueError: a delay that is not positive, ``max_delay < initial_delay``, or
        ``max_attempts`` below 1
    """

    initial_delay: float = 0.1
    max_delay: float = 10.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not self.initial_delay > 0:
            raise ValueError(f"initial_delay must be positive, got {self.initial_delay!r}")
        if not self.max_delay >= self.initial_delay:
            raise ValueError(
                f"max_delay must be at least initial_delay ({self.initial_delay!r}), "
                f"got {self.max_delay!r}"
            )
        attempts = self.max_attempts
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)):
            raise ValueError(f"max_attempts must be an int or None, got {attempts!r}")
        if attempts is not None and attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (or None), got {attempts!r}")

    def delay(self, attempt: int) -> float:
        """The wait before attempt ``attempt`` (0, 1, ...): full jitter."""
        bound = self.max_delay if attempt >= 64 else self.initial_delay * 2.0**attempt
        return random.uniform(0.0, min(self.max_delay, bound))

    def gives_up(self, attempts: int) -> bool:
        """Whether ``attempts`` failed attempts are all this policy allows."""
        return self.max_attempts is not None and attempts >= self.max_attempts


def is_permanent(error: BaseException) -> bool:
    """Whether a failed attempt's error means no later attempt can succeed: a handshake
    refused with a client error (401, 403, 404 ...), not a 408 or 429."""
    if not isinstance(error, InvalidStatus):
        return False
    status = error.response.status_code
    return 400 <= status < 500 and status not in _TRANSIENT_STATUSES


async def resolve_token(token: Token | None) -> str | None:
    """The token to send now: ``token`` itself, or what its function returns (awaited
    when it returns an awaitable)."""
    if token is None or isinstance(token, str):
        return token
    value = token()
    if inspect.isawaitable(value):
        value = await value
    return value
