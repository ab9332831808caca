"""The postgres antenna: the driver side of xraptor's antenna contract.

As generated, it runs on ``_BUS``, a pub/sub bus inside this process standing in
for your backend, so that the conformance suite passes from the start. Replace
every ``TODO`` with your backend's calls; keep the docstrings' promises.

The base class (:class:`xraptor.Antenna`) does the rest: local fan-out (one
``watch`` per channel per process, however many listeners), ``post``,
``subscribe``, ``listen``, the lifecycle (``start``/``close``, ``async with``),
argument checks and the ``state`` it starts and ends with.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import xraptor

#: TODO: remove; the stand-in backend: channel -> the antennas watching it
_BUS: dict[str, set[PostgresAntenna]] = {}

#: seconds a publish may take before it raises AntennaUnavailable (option ``timeout``)
DEFAULT_TIMEOUT = 5.0


class PostgresAntenna(xraptor.Antenna):
    """Pub/sub over postgres.

    Options (``antenna_options={...}``, or a URL, or the class-wide
    ``PostgresAntenna.set_config({...})``, which ``antenna_options`` override):

    * ``url``: where the backend is (default ``postgres://localhost``);
    * ``timeout``: seconds a publish may take before it raises
      :class:`xraptor.AntennaUnavailable` (default 5);
    * ``health_timeout``, ``health_interval``: every antenna's (defaults 3 and 1),
      used only if :meth:`ping` is implemented.
    """

    #: antenna="postgres" selects it
    name: ClassVar[str] = "postgres"
    #: antenna="postgres://..." selects it (the default, ``(name,)``, spelled out)
    schemes: ClassVar[tuple[str, ...]] = ("postgres",)

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """The options ``antenna="postgres://..."`` stands for (the base's default)."""
        return {"url": url}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # merges set_config() and checks the health options
        self.url: str = str(self.options.get("url", "postgres://localhost"))
        self.timeout = float(self.options.get("timeout", DEFAULT_TIMEOUT))
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout}")

    async def connect(self) -> None:
        """Open the backend connection(s). Called once, by :meth:`start`.

        The base class sets ``state`` to ``up`` when this returns (unless the driver
        said ``down`` meanwhile with :meth:`set_state`) and to ``closed`` on close.
        Raise to make ``start`` fail. After a reconnection in the background, call
        ``self.set_state("up")``, resubscribe ``self.watched_channels()`` and call
        ``self.report_gap()``; while the backend is unreachable,
        ``self.set_state("down")``.
        """
        # TODO: connect to self.url

    async def disconnect(self) -> None:
        """Release every backend resource (connections, tasks). Called once, by
        :meth:`close`; no listener is left by then."""
        # TODO: close your connections and cancel and await your tasks
        for channel in list(_BUS):
            self._leave(channel)

    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to ``channel``, to every process watching it now.

        Calls made in a given order must reach subscribers in that order, even
        when they run concurrently (through a pool of connections).

        :raises xraptor.AntennaUnavailable: when the backend cannot take it within
            ``self.timeout`` seconds
        """
        try:
            async with asyncio.timeout(self.timeout):
                # TODO: send to your backend; a backend's limits on channel names
                # (length, characters) are the driver's to hide, by encoding or
                # hashing, never by truncating
                for antenna in tuple(_BUS.get(channel, ())):
                    antenna.deliver(channel, message)
        except (TimeoutError, OSError) as error:
            raise xraptor.AntennaUnavailable(f"postgres: cannot publish: {error}") from error

    async def watch(self, channel: str) -> None:
        """Start receiving ``channel``, handing each message to ``self.deliver``.

        Must not return before a message published after it returns is sure to be
        delivered. Called at most once per channel at a time: the base class never
        runs ``watch`` or ``unwatch`` concurrently for the same channel, but may for
        different channels, so shared state (one subscriber connection) must take
        concurrent calls.
        """
        # TODO: subscribe at your backend; its reader calls self.deliver(channel, message)
        _BUS.setdefault(channel, set()).add(self)

    async def unwatch(self, channel: str) -> None:
        """Stop receiving ``channel`` and free what watching it held at the backend.

        Same concurrency as :meth:`watch`.
        """
        # TODO: unsubscribe at your backend
        self._leave(channel)

    async def is_alive(self, channel: str) -> bool:
        """Whether some process (this one included) listens to ``channel`` now.

        Ask the backend (never answer a constant). Called on an antenna that has not
        started, the base class starts it first.
        """
        # TODO: ask your backend (e.g. its subscriber count for the channel)
        return bool(_BUS.get(channel))

    # Optional: one round trip to the backend. Implementing it makes the base class
    # probe it every health_interval seconds; no answer within health_timeout makes
    # state "down" until one comes. It must be safe to cancel.
    #
    # async def ping(self) -> None:
    #     await self._connection.ping()

    def _leave(self, channel: str) -> None:
        watchers = _BUS.get(channel)
        if watchers is None:
            return
        watchers.discard(self)
        if not watchers:
            del _BUS[channel]
