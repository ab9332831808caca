"""Fixtures: a private nats-server on a free loopback port, which tests may kill and restart.

Per the project's test policy: with ``nats-server`` on PATH each test module gets
its own server (started with mirakuru); without it ``XRAPTOR_NATS_URL`` is used
(fault-injection tests then skip); with neither the tests skip, except under
``CI=true`` where a missing backend fails the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Iterator

import pytest
from mirakuru import TCPExecutor


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A NATS server for the tests: ``url``, and ``kill()`` / ``restart()`` when private."""

    def __init__(self, url: str, binary: str | None) -> None:
        self.url = url
        self.binary = binary
        self._executor: TCPExecutor | None = None
        if binary is not None:
            self.port = int(url.rsplit(":", 1)[1])

    @property
    def private(self) -> bool:
        return self.binary is not None

    def start(self) -> None:
        assert self.binary is not None
        self._executor = TCPExecutor(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
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

    def restart(self) -> None:
        """Start the server again on the same port."""
        if self._executor is not None and self._executor.running():
            self.kill()
        self.start()

    def stop(self) -> None:
        if self._executor is not None and self._executor.running():
            self._executor.kill(wait=True, sig=signal.SIGKILL)


def _binary() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    binary = _binary()
    if binary is None:
        url = os.environ.get("XRAPTOR_NATS_URL")
        if not url:
            reason = "no nats-server on PATH and XRAPTOR_NATS_URL is not set"
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true: {reason}")
            pytest.skip(reason)
        yield NatsServer(url, None)
        return
    server = NatsServer(f"nats://127.0.0.1:{_free_port()}", binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def private_nats() -> Iterator[NatsServer]:
    """A nats-server of the test's own, for killing and restarting."""
    binary = _binary()
    if binary is None:
        reason = "fault injection needs the nats-server binary"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    server = NatsServer(f"nats://127.0.0.1:{_free_port()}", binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
