"""The background round-trip probe of an antenna that implements :meth:`Antenna.ping`.

A driver learns that its backend is gone when a connection drops; a backend that
freezes (SIGSTOP, a stuck VM, a half-open TCP connection) drops nothing, so the
driver keeps reporting ``up``. The probe asks the backend for one round trip
every ``health_interval`` seconds; one that gets no answer within
``health_timeout`` makes the antenna's reported state ``down`` until a later
probe is answered. The probe only *reports*: it neither reconnects nor reports a
gap (a late answer loses no message); what the driver reports with
:meth:`Antenna.set_state` stays its own, and the antenna is down when either
says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("xraptor.antenna")

#: seconds a probe may wait for its answer
DEFAULT_TIMEOUT = 3.0
#: seconds between the end of one probe and the start of the next
DEFAULT_INTERVAL = 1.0


def seconds_option(options: dict[str, Any], key: str, default: float) -> float:
    """The antenna option ``key``: a positive, finite number of seconds.

    :raises ValueError: on anything else (a string, a bool, zero, a negative
        number, infinity, NaN)
    """
    value = options.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"antenna option {key!r} must be a positive number of seconds, got {value!r}"
        )
    return float(value)


class Prober:
    """Calls ``ping`` in a background task and keeps the verdict.

    :param ping: one round trip to the backend; returns when answered
    :param label: how log lines name the antenna
    """

    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        *,
        label: str,
        interval: float,
        timeout: float,
    ) -> None:
        self._ping = ping
        self.label = label
        self.interval = interval
        self.timeout = timeout
        #: why the last probe got no answer; ``None`` while the backend answers
        self.failure: str | None = None
        #: seconds the last answered probe took
        self.round_trip: float | None = None
        self._connected = True
        #: bumped whenever the driver reports a new state: a probe that straddles
        #: a reconnection says nothing about the new connection
        self._epoch = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, connected: bool) -> None:
        """Start probing (on the running loop); ``connected``: the driver's state is up."""
        if self._task is not None:
            return
        self._connected = connected
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"xraptor {self.label} antenna health probe"
        )

    async def stop(self) -> None:
        """Cancel the probe task and wait until it has ended."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        # bounded: a driver's ping stuck in a client library that ignores cancellation
        # must not hold up the antenna's close (and a server's shutdown)
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            logger.warning(
                "%s: the health probe did not stop within %g s", self.label, self.timeout
            )
            task.add_done_callback(_retrieve)
            return
        if not task.cancelled() and task.exception() is not None:
            logger.debug("%s: the health probe ended with %r", self.label, task.exception())

    def connection_changed(self, connected: bool) -> None:
        """The driver reported a new state. Probes pause while it says down; a
        reconnection is probed at once rather than after ``interval``."""
        self._epoch += 1
        self._connected = connected
        if connected and self._wake is not None:
            self._wake.set()

    def describe(self) -> dict[str, Any]:
        """The probe's part of :meth:`Antenna.describe`."""
        return {
            "round_trip_ms": None if self.round_trip is None else round(self.round_trip * 1e3, 2),
            "probe_failure": self.failure,
            "health_timeout": self.timeout,
        }

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            wake.clear()
            if self._connected:
                await self._probe()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await wake.wait()

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        epoch = self._epoch
        sent = loop.time()
        failure: str | None = None
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await self._ping()
        except Exception as error:
            if deadline.expired():
                failure = f"no answer within {self.timeout:g} s"
            else:
                failure = f"{type(error).__name__}: {error}"
        if epoch != self._epoch:
            return
        if failure is None:
            self.round_trip = loop.time() - sent
            if self.failure is not None:
                logger.warning(
                    "%s antenna: the backend answers again (round trip %.1f ms)",
                    self.label,
                    self.round_trip * 1e3,
                )
        elif self.failure is None:
            logger.warning(
                "%s antenna: health probe failed (%s); reporting down", self.label, failure
            )
        self.failure = failure


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: the probe is over, its error is moot
