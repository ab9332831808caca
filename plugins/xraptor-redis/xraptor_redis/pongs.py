"""Health-probe PINGs on the subscriber connection, matched with their answers.

Once a connection has subscribed, Redis answers ``PING token`` with a pub/sub
message ``["pong", token]`` in the stream the reader task consumes (before any
subscription, with the plain reply ``token``), so :meth:`RedisAntenna.ping`
cannot read its own answer: it registers a waiter here and the reader hands
the answer over. Each probe sends a token of its own, so answers to the silence
watchdog's PINGs (no token) or to a probe that already timed out are ignored.
"""

from __future__ import annotations

import asyncio
import itertools


class Pongs:
    """Waiters for the answers of PINGs sent on one antenna's subscriber connection."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._waiters)

    def expect(self) -> tuple[str, asyncio.Future[None]]:
        """A new token to send with ``PING``, and the future its answer resolves."""
        token = f"xraptor-health-{next(self._seq)}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[token] = future
        return token, future

    def forget(self, token: str) -> None:
        """The probe is over (answered, timed out or cancelled): ignore a late answer."""
        self._waiters.pop(token, None)

    def answered(self, token: str) -> None:
        """The reader got the answer to ``PING token``."""
        future = self._waiters.pop(token, None)
        if future is not None and not future.done():
            future.set_result(None)

    def fail_all(self, error: BaseException) -> None:
        """The connection is gone: no waiting PING will be answered."""
        waiters, self._waiters = self._waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: no "never retrieved" warning if nobody awaits it
