"""Test support: a private nats-server on a free loopback port, which tests may kill and restart.

Per the project's test policy: with ``nats-server`` on PATH each test module gets
its own server (started with mirakuru); without it ``XRAPTOR_NATS_URL`` is used
(fault-injection tests then skip); with neither the tests skip, except under
``CI=true`` where a missing backend fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from mirakuru import TCPExecutor

from xraptor.testing import ServerProcess, free_port

CHAT_SERVER = Path(__file__).with_name("nats_chat_server.py")


class NatsServer:
    """A NATS server for the tests: ``url``, and ``kill()`` / ``restart()`` when private."""

    def __init__(self, url: str, binary: str | None, extra_args: tuple[str, ...] = ()) -> None:
        self.url = url
        self.binary = binary
        self.extra_args = extra_args
        self._executor: TCPExecutor | None = None
        if binary is not None:
            self.port = int(url.rsplit(":", 1)[1])

    @property
    def private(self) -> bool:
        return self.binary is not None

    def start(self) -> None:
        assert self.binary is not None
        self._executor = TCPExecutor(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), *self.extra_args],
            host="127.0.0.1",
            port=self.port,
            timeout=10,
        )
        self._executor.start()

    def kill(self) -> None:
        """kill -9 the server: clients see the connection drop without a goodbye."""
        if not self.private:
            pytest.skip("fault injection needs a private nats-server (nats-server not on PATH)")
        assert self._executor is not None
        self._executor.kill(wait=True, sig=signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing is read or answered."""
        assert self._executor is not None and self._executor.process is not None
        os.kill(self._executor.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._executor is not None and self._executor.process is not None
        os.kill(self._executor.process.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        """Whether this test's private server is running now."""
        return self._executor is not None and self._executor.running()

    def restart(self) -> None:
        """Start the server again on the same port."""
        if self._executor is not None and self._executor.running():
            self.kill()
        self.start()

    def stop(self) -> None:
        if self._executor is not None and self._executor.running():
            self.resume()
            self._executor.kill(wait=True, sig=signal.SIGKILL)


def shared_url_or_skip() -> str:
    """``XRAPTOR_NATS_URL`` (used without the nats-server binary), else a skip, or a
    failure under ``CI=true``."""
    url = os.environ.get("XRAPTOR_NATS_URL")
    if not url:
        reason = "no nats-server on PATH and XRAPTOR_NATS_URL is not set"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return url


def jetstream_server(store: Path) -> NatsServer | None:
    """A nats-server with JetStream storing in ``store`` (not started); ``None`` without
    the binary."""
    binary = nats_binary()
    if binary is None:
        return None
    return NatsServer(f"nats://127.0.0.1:{free_port()}", binary, ("-js", "-sd", str(store)))


def nats_binary() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )


def chat_process(url: str, *args: str) -> ServerProcess:
    """A chat server process (``nats_chat_server.py``) on a free port; ``args`` follow
    its antenna URL and port."""
    port = free_port()
    command = [sys.executable, str(CHAT_SERVER), url, str(port), *args]
    return ServerProcess(command, port=port, timeout=15)


@contextlib.contextmanager
def two_processes(url: str, *args: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two chat server processes on the antenna at ``url``, stopped on exit."""
    with chat_process(url, *args) as one, chat_process(url, *args) as two:
        yield one, two


async def wait_antenna_state(
    processes: Iterable[ServerProcess], state: str, seconds: float
) -> None:
    """Wait until every process's /health shows its antenna in ``state``."""
    deadline = time.monotonic() + seconds
    while any(p.health()["antenna"]["state"] != state for p in processes):
        assert time.monotonic() < deadline, f"the antennas are not {state} after {seconds} s"
        await asyncio.sleep(0.1)
