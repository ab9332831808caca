"""How a :class:`xraptor.Client` reconnects: the policy, the error, the supervisor.

:class:`Reconnect` is the policy (exponential backoff with full jitter, a bound on
the attempts), :class:`ConnectionLost` the error of whatever could not survive a
dropped connection: a request in flight, a SUB being entered, and every stream once
the client gave up reconnecting. :class:`Reconnector` is the client's part that acts
on a drop: it fails what was in flight, waits, opens a new connection (the token
asked for again) and re-opens every stream there.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Literal

from websockets.exceptions import ConnectionClosed, InvalidStatus

from .handshake import handshake_headers
from .redaction import redacting_logger, scrub

if TYPE_CHECKING:
    from .client import Client

__all__ = ["ConnectionLost", "Reconnect", "Reconnector", "State", "Token", "resolve_token"]

logger = redacting_logger("xraptor.client")

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


class Reconnector:
    """The reconnecting part of one :class:`~xraptor.Client` (its ``reconnect`` policy).

    :ivar settled: set whenever the client is not reconnecting; requests waiting for
        the connection wait for it
    :ivar given_up: the error of the reconnection given up, ``None`` otherwise
    """

    def __init__(self, client: Client, policy: Reconnect) -> None:
        self.client = client
        self.policy = policy
        self.settled = asyncio.Event()
        self.settled.set()
        self.given_up: ConnectionLost | None = None
        self._supervisor: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The client connected: watch its connection."""
        self.given_up = None
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        """The client closes: stop reconnecting, now (a wait or an attempt is cancelled)."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor

    async def until_open(self, deadline: float) -> None:
        """Wait while the client reconnects (until ``deadline``, loop time)."""
        client = self.client
        if client._state != "reconnecting":
            return
        try:
            async with asyncio.timeout_at(deadline):
                while client.state == "reconnecting":  # the property: not narrowed by mypy
                    await self.settled.wait()
        except TimeoutError:
            raise TimeoutError(
                f"not reconnected to {scrub(client.url)} in time: the request was not sent"
            ) from None
        if client.state != "open":
            raise ConnectionLost(
                self.given_up.message
                if self.given_up is not None
                else "the client was closed while it was reconnecting"
            )

    def dropped(self, error: BaseException) -> None:
        """The connection dropped: fail what was in flight; streams wait to be re-opened."""
        client = self.client
        client._state = "reconnecting"
        self.settled.clear()
        logger.info("the connection to %s dropped (%s); reconnecting", client.url, error)

        def lost(what: str) -> ConnectionLost:
            failure = ConnectionLost(
                f"the connection dropped before {what} ({error}); nothing is retried",
                error if isinstance(error, ConnectionClosed) else None,
            )
            failure.__cause__ = error
            return failure

        for future in client._pending.values():
            if not future.done():
                future.set_exception(lost("the reply (the server may have handled the request)"))
        for stream in tuple(client._streams.values()):
            stream._dropped(lost("the SUB's acknowledgment"))

    async def _supervise(self) -> None:
        """Reconnect each time the reader ends, until :meth:`close` or giving up."""
        try:
            await self._reconnect_each_drop()
        except Exception as bug:  # pragma: no cover - defensive: never hang "reconnecting"
            logger.exception("the client's reconnection failed")
            self._give_up(0, bug)

    async def _reconnect_each_drop(self) -> None:
        client, policy = self.client, self.policy
        failures = 0
        while True:
            reader = client._reader
            if reader is not None:
                # asyncio.wait, not ``await reader``: stop() cancelling this must not
                # cancel the reader too
                await asyncio.wait((reader,))
            if client._closing:
                return
            last: BaseException | None = client._closed_error
            while True:
                if policy.gives_up(failures):
                    self._give_up(failures, last)
                    return
                await asyncio.sleep(policy.delay(failures))
                failures += 1
                try:
                    async with asyncio.timeout(client.timeout):
                        token = await resolve_token(client._token)
                except Exception as failure:  # the token's source failed: try again later
                    logger.warning("the token function failed: %r; retrying", failure)
                    last = failure
                    continue
                try:
                    handshake_headers(token, client._headers, client._extra_headers)
                except (TypeError, ValueError) as bad:  # a bug: no attempt will do better
                    self._give_up(failures, bad)
                    return
                try:
                    async with asyncio.timeout(client.timeout):
                        ws = await client._handshake(token)
                except Exception as failure:
                    last = failure
                    if is_permanent(failure):
                        self._give_up(failures, failure)
                        return
                    logger.info("reconnecting to %s failed: %r", client.url, failure)
                    continue
                break
            client._attach(ws)
            if await self._resubscribe():
                failures = 0
                client.reconnects += 1
                logger.info("reconnected to %s (%d streams)", client.url, len(client._streams))

    async def _resubscribe(self) -> bool:
        """Re-open every stream on the new connection; ``False`` if it dropped meanwhile."""
        client = self.client
        streams = tuple(client._streams.values())
        acks: list[asyncio.Future[None]] = []
        try:
            for stream in streams:  # SUB frames first: later requests come after them
                acks.append(await stream._resubscribe())
        except ConnectionClosed:
            return False
        if client._state != "open":
            return False
        self.settled.set()
        if acks:
            await asyncio.wait(acks, timeout=client.timeout)
        dropped = False
        for stream, ack in zip(streams, acks, strict=True):
            if ack.cancelled():  # closed by the application meanwhile
                continue
            if not ack.done():
                ack.cancel()
                stream._end(
                    ConnectionLost(
                        f"no acknowledgment of the stream's SUB {stream.route} within "
                        f"{client.timeout} s after reconnecting"
                    )
                )
                client._unsub_soon(stream)
            elif (error := ack.exception()) is None:
                stream._resubscribed()
            elif isinstance(error, ConnectionLost):
                dropped = True  # re-opened on the next connection
            else:
                stream._end(error)  # refused now (a ClientError)
        return not dropped and client._state == "open"

    def _give_up(self, attempts: int, last: BaseException | None) -> None:
        client = self.client
        message = scrub(
            f"gave up reconnecting to {client.url} after {attempts} attempt(s): {last!r}"
        )
        logger.warning("%s", message)
        self.given_up = ConnectionLost(message)
        client._state = "closed"
        client._ws = None
        self.settled.set()
        for stream in tuple(client._streams.values()):
            ended = ConnectionLost(message)
            ended.__cause__ = last
            stream._end(ended)
