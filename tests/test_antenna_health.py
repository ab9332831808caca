"""The optional round-trip check (``Antenna.ping``) and the base class's background probe.

``ProbedAntenna`` is the memory bus with a real ``ping`` whose answers the test
controls: answered at once, or left hanging until the test resolves it (or the
probe's ``health_timeout`` cancels it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any, ClassVar

import pytest

from core_support import ServerFactory
from xraptor import XRaptor
from xraptor.antennas import MemoryAntenna
from xraptor.testing import eventually, health


class ProbedAntenna(MemoryAntenna):
    """The memory bus with a ``ping`` that the test can freeze."""

    name: ClassVar[str] = "probed"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.answer = True
        #: pings waiting for the test (while ``answer`` is false)
        self.pending: list[asyncio.Future[None]] = []
        self.pings = 0
        self.cancelled = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.answer:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        try:
            await future
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def _probe_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if "health probe" in task.get_name()]


async def _until(condition: Any, timeout: float = 5.0) -> bool:
    async def check() -> bool:
        return bool(condition())

    return await eventually(check, timeout, interval=0.005)


async def test_memory_antenna_declares_no_ping_and_is_not_probed() -> None:
    antenna = MemoryAntenna()
    assert not antenna.can_ping
    async with antenna:
        assert _probe_tasks() == []
        assert antenna.describe() == {"name": "memory", "state": "up", "channels": 0}
        with pytest.raises(NotImplementedError):
            await antenna.ping()


@pytest.mark.parametrize("bad", ["3", 0, -1.0, float("inf"), float("nan"), True, None])
@pytest.mark.parametrize("option", ["health_timeout", "health_interval"])
def test_bad_health_options_are_clear_errors(option: str, bad: object) -> None:
    with pytest.raises(ValueError, match=f"'{option}' must be a positive number of seconds"):
        ProbedAntenna(**{option: bad})
    with pytest.raises(ValueError, match=option):
        XRaptor("127.0.0.1", 0, antenna=ProbedAntenna, antenna_options={option: bad})


def test_health_options_are_antenna_options() -> None:
    antenna = XRaptor(
        "127.0.0.1", 0, antenna=ProbedAntenna, antenna_options={"health_timeout": 0.25}
    ).antenna
    assert antenna.can_ping
    assert antenna.health_timeout == 0.25 and antenna.health_interval == 1.0
    assert antenna.describe()["health_timeout"] == 0.25
    ProbedAntenna.set_config({"health_interval": 2})
    try:
        assert ProbedAntenna().health_interval == 2.0
    finally:
        ProbedAntenna.set_config({})


async def test_a_silent_backend_is_reported_down_then_up_without_a_gap() -> None:
    antenna = ProbedAntenna(health_timeout=0.3, health_interval=0.05)
    async with antenna, antenna.subscribe("ch") as sub:
        assert await _until(lambda: antenna.describe()["round_trip_ms"] is not None)
        assert antenna.state == "up" and antenna.describe()["probe_failure"] is None
        antenna.answer = False
        frozen = time.monotonic()
        assert await _until(lambda: antenna.state == "down")
        elapsed = time.monotonic() - frozen
        assert 0.3 <= elapsed < 0.3 + 0.05 + 0.5, elapsed
        assert antenna.connection_state == "up"  # the driver itself saw nothing
        assert antenna.describe()["state"] == "down"
        assert antenna.describe()["probe_failure"] == "no answer within 0.3 s"
        assert antenna.cancelled >= 1  # the timed-out ping was cancelled, not left behind
        antenna.answer = True
        for future in antenna.pending:
            if not future.done():
                future.set_result(None)
        assert await _until(lambda: antenna.state == "up", 1.0)
        assert antenna.describe()["probe_failure"] is None
        await antenna.post("ch", "still here")
        assert await asyncio.wait_for(sub.__anext__(), 1) == "still here"
        assert sub.gaps == 0  # a late answer lost nothing: no gap notice


async def test_a_ping_that_raises_reports_down_with_the_reason() -> None:
    antenna = ProbedAntenna(health_timeout=5.0, health_interval=0.05)
    async with antenna:
        antenna.answer = False
        assert await _until(lambda: antenna.pending)
        antenna.pending[0].set_exception(ConnectionResetError("reset by peer"))
        assert await _until(lambda: antenna.state == "down", 1.0)
        assert antenna.describe()["probe_failure"] == "ConnectionResetError: reset by peer"
        antenna.answer = True
        assert await _until(lambda: antenna.state == "up", 1.0)


async def test_driver_down_wins_and_pauses_the_probes() -> None:
    antenna = ProbedAntenna(health_interval=0.05)
    async with antenna:
        assert await _until(lambda: antenna.pings >= 2)
        antenna.set_state("down")
        assert antenna.state == "down" and antenna.describe()["state"] == "down"
        assert antenna.describe()["probe_failure"] is None
        await asyncio.sleep(0.06)
        pings = antenna.pings
        await asyncio.sleep(0.3)
        assert antenna.pings == pings  # no probing while the driver says down
        antenna.set_state("up")
        assert await _until(lambda: antenna.pings > pings, 1.0)
        assert antenna.state == "up"


async def test_a_reconnection_is_probed_at_once() -> None:
    antenna = ProbedAntenna(health_interval=30.0)
    async with antenna:
        assert await _until(lambda: antenna.pings == 1)
        antenna.set_state("down")
        antenna.set_state("up")
        assert await _until(lambda: antenna.pings == 2, 1.0)  # not 30 s later
        antenna.set_state("up")  # no change of state: no extra probe
        await asyncio.sleep(0.1)
        assert antenna.pings == 2


async def test_a_probe_that_straddles_a_reconnection_says_nothing() -> None:
    antenna = ProbedAntenna(health_timeout=30.0, health_interval=30.0)
    async with antenna:
        assert await _until(lambda: antenna.pings == 1)
        antenna.answer = False
        antenna.set_state("down")
        antenna.set_state("up")  # wakes the probe: its ping now hangs
        assert await _until(lambda: len(antenna.pending) == 1)
        antenna.set_state("down")  # the connection the ping went out on is gone
        antenna.set_state("up")
        antenna.pending[0].set_exception(ConnectionResetError("old connection"))
        assert await _until(lambda: len(antenna.pending) == 2)  # probed again at once
        assert antenna.state == "up" and antenna.describe()["probe_failure"] is None
        antenna.pending[1].set_exception(ConnectionResetError("new connection"))
        assert await _until(lambda: antenna.state == "down", 1.0)
        assert antenna.describe()["probe_failure"] == "ConnectionResetError: new connection"


async def test_close_cancels_a_hanging_probe_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    tasks_before = set(asyncio.all_tasks())
    antenna = ProbedAntenna(health_timeout=30.0, health_interval=0.05)
    await antenna.start()
    assert len(_probe_tasks()) == 1
    antenna.answer = False
    assert await _until(lambda: antenna.pending)
    started = time.monotonic()
    await antenna.close()
    assert time.monotonic() - started < 0.5
    assert antenna.cancelled == 1 and antenna.state == "closed"
    assert _probe_tasks() == []
    assert set(asyncio.all_tasks()) == tasks_before
    await antenna.close()  # again: a no-op
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


async def test_close_between_probes_and_a_failed_start_leave_no_task() -> None:
    antenna = ProbedAntenna(health_interval=30.0)
    await antenna.start()
    assert await _until(lambda: antenna.pings == 1)
    await antenna.close()
    assert _probe_tasks() == []

    class Unreachable(ProbedAntenna):
        async def connect(self) -> None:
            raise ConnectionRefusedError("nobody home")

    failing = Unreachable()
    with pytest.raises(ConnectionRefusedError):
        await failing.start()
    assert _probe_tasks() == [] and failing.pings == 0
    await failing.close()


async def test_health_turns_503_while_the_backend_is_silent(make_server: ServerFactory) -> None:
    antenna = ProbedAntenna(health_timeout=0.5, health_interval=0.1)
    server = await make_server(antenna=antenna)
    status, body = await asyncio.to_thread(health, server.port)
    assert status == 200 and body["antenna"]["state"] == "up"
    assert isinstance(body["antenna"]["round_trip_ms"], float)
    antenna.answer = False
    assert await _until(lambda: antenna.state == "down", 2.0)
    status, body = await asyncio.to_thread(health, server.port)
    assert status == 503 and body["status"] == "degraded"
    assert body["antenna"]["probe_failure"] == "no answer within 0.5 s"
    metrics = await asyncio.to_thread(_get, server.port, "/metrics")
    assert 'xraptor_antenna_up{antenna="probed"} 0' in metrics
    assert 'xraptor_antenna_round_trip_seconds{antenna="probed"} ' in metrics
    antenna.answer = True
    assert await _until(lambda: antenna.state == "up", 2.0)
    status, body = await asyncio.to_thread(health, server.port)
    assert status == 200 and body["status"] == "ok"
    metrics = await asyncio.to_thread(_get, server.port, "/metrics")
    assert 'xraptor_antenna_up{antenna="probed"} 1' in metrics


def _get(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        text: str = response.read().decode()
    return text
