"""Holding the antenna's promises across a NATS cluster.

In a cluster, a process's SUB reaches the member it is connected to at once, and
the other members later: the member forwards the interest over its routes, and
until a member has it, a message published there for that subject goes nowhere.
So :meth:`~xraptor_nats.antenna.NatsAntenna.watch` returning after a round trip to
its own member would not keep the contract's promise ("a message published after
``watch()`` returns is delivered") for a publisher connected to another member.

:class:`ClusterProbes` keeps one small connection to each *other* member of the
cluster (learnt from the server's ``connect_urls``, refreshed when the server
announces new ones and after a reconnect). :meth:`ClusterProbes.confirm` publishes a
marker on a subject through each of them, again every few milliseconds, until each
marker came back through the antenna's own subscription: then every member routes
that subject to this process. A member forwards a client's interests to a peer over
one route connection, in the order the client sent them (per account), so the
marker also proves the interests sent before it (a reconnect's resubscriptions).

A single server (no cluster) has no other member: nothing is connected and
:meth:`confirm` returns at once. A member that is down, or not reachable from here,
is skipped rather than waited for (it receives every interest from its routes when
it is back); a member that is up but never routes the marker (a broken route)
makes :meth:`confirm` log a warning when ``timeout`` ran out, and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

logger = logging.getLogger("xraptor_nats")

#: header of a cluster marker: its value is the token the antenna waits for. Every
#: other process watching the subject receives the marker too and drops it
MARKER_HEADER = "Xraptor-Cluster-Marker"
#: first and last pause between two markers through one member (seconds)
_FIRST_PAUSE = 0.002
_LAST_PAUSE = 0.05
#: what a probe connection may meet while its member goes away
_GONE = (nats.errors.Error, OSError, TimeoutError)


def member_urls(nc: Client) -> list[str]:
    """The client URLs of every member of ``nc``'s cluster but the one it is on.

    From the server's latest INFO (``connect_urls``, the members' advertised client
    addresses), with the scheme of the current connection; empty for a lone server.
    """
    current = nc.connected_url
    if current is None:
        return []
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    urls = info.get("connect_urls") or []
    scheme = current.scheme or "nats"
    here = current.netloc.rpartition("@")[2]
    return [f"{scheme}://{url}" for url in urls if isinstance(url, str) and url != here]


class ClusterProbes:
    """The antenna's connections to the other members of its cluster, and the markers
    in flight through them.

    :param options: ``nats.connect`` keyword arguments for a probe connection
        (credentials and TLS as the antenna's own); ``servers`` is set per member
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._members: dict[str, Client] = {}
        self._opening: dict[str, asyncio.Task[None]] = {}
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._tokens = itertools.count()
        self._closed = False

    @property
    def members(self) -> list[str]:
        """The members a probe connection is open to."""
        return [url for url, nc in self._members.items() if nc.is_connected]

    def on_marker(self, token: str) -> None:
        """A marker came back through the antenna's subscription."""
        waiter = self._waiting.get(token)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def refresh(self, nc: Client, *, wait: bool) -> None:
        """Open probe connections to the members ``nc``'s server lists and close those
        to members it no longer lists (or to the member ``nc`` is on now).

        :param wait: return once the new connections are open (or failed); else they
            open in the background (a reconnection does not wait on a dead member)
        """
        if self._closed:
            return
        wanted = set(member_urls(nc))
        for url in [url for url in self._members if url not in wanted]:
            await _close(self._members.pop(url))
        loop = asyncio.get_running_loop()
        for url in wanted:
            if url not in self._members and url not in self._opening:
                task = loop.create_task(self._open(url))
                self._opening[url] = task
                task.add_done_callback(functools.partial(self._opened, url))
        if wait and self._opening:
            await asyncio.wait(list(self._opening.values()))

    def _opened(self, url: str, task: asyncio.Task[None]) -> None:
        self._opening.pop(url, None)

    async def _open(self, url: str) -> None:
        options = {
            **self._options,
            "servers": [url],
            "allow_reconnect": True,
            # no retries for the first connection (nats-py would retry it forever
            # with -1); reconnecting forever once connected (set below)
            "max_reconnect_attempts": 0,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 2.0,
            "error_cb": _quiet,
        }
        try:
            nc = await nats.connect(**options)
        except Exception as error:  # a member that is down now: skipped until next refresh
            logger.debug("no probe connection to NATS member %s: %s", url, error)
            return
        nc.options["max_reconnect_attempts"] = -1
        if self._closed or url in self._members:
            await _close(nc)
            return
        self._members[url] = nc

    async def confirm(self, subject: str, timeout: float) -> None:
        """Return once every other reachable member routes ``subject`` to this process
        (see the module's docstring), or ``timeout`` seconds ran out (then log it)."""
        members = [(url, nc) for url, nc in self._members.items() if nc.is_connected]
        if not members:
            return
        results = await asyncio.gather(
            *(self._through(nc, subject, timeout) for _, nc in members),
            return_exceptions=True,
        )
        late = [url for (url, _), ok in zip(members, results, strict=True) if ok is not True]
        if late:
            logger.warning(
                "NATS members %s did not route %.80r here within %.1f s; a message "
                "published there meanwhile may not be delivered",
                ", ".join(late),
                subject,
                timeout,
            )

    async def _through(self, nc: Client, subject: str, timeout: float) -> bool:
        token = str(next(self._tokens))
        back: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[token] = back
        pause = _FIRST_PAUSE
        try:
            async with asyncio.timeout(timeout):
                while not back.done():
                    if not nc.is_connected:
                        return True  # the member went away: it is not waited for
                    with contextlib.suppress(*_GONE):
                        await nc.publish(subject, b"", headers={MARKER_HEADER: token})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(back), pause)
                    pause = min(pause * 2, _LAST_PAUSE)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting.pop(token, None)

    async def close(self) -> None:
        self._closed = True
        opening = list(self._opening.values())
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        members, self._members = list(self._members.values()), {}
        await asyncio.gather(*(_close(nc) for nc in members))


async def _close(nc: Client) -> None:
    with contextlib.suppress(*_GONE):
        await nc.close()


async def _quiet(error: Exception) -> None:
    logger.debug("NATS probe connection: %s: %s", type(error).__name__, error)
