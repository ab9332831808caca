"""A private redis-server for the tests, and the fixtures built on it.

DESIGN §7: when ``redis-server`` is on PATH the tests start their own instance on a
free loopback port, so they can kill and restart it. Otherwise they use
``XRAPTOR_REDIS_URL`` (fault-injection tests skip then). With neither, the tests
skip with the reason, except under ``CI=true``, where a missing backend fails.

Written with the standard library rather than pytest-redis / mirakuru: the fault
tests need kill -9, SIGSTOP/SIGCONT and a restart on the same port, readiness
means answering PING, and the nox session then needs no test-only dependency
beyond the core's ``[test]`` extra.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from xraptor.testing import ServerProcess

if TYPE_CHECKING:
    pass

REDIS_BINARY = shutil.which("redis-server")
EXTERNAL_URL = os.environ.get("XRAPTOR_REDIS_URL")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A private ``redis-server`` the test owns: it may kill and restart it."""

    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    #: a folder for an append-only file: the server then persists every write before
    #: answering it (``appendonly yes``, ``appendfsync always``) and a restart keeps it
    persist_in: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_BINARY is not None
        persistence = ["--appendonly", "no"]
        if self.persist_in is not None:
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
            persistence += ["--dir", self.persist_in]
        self.process = subprocess.Popen(
            [
                REDIS_BINARY,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 10 s")
            time.sleep(0.02)

    def kill(self) -> None:
        """kill -9: the server vanishes without closing anything cleanly."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def _no_backend(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing Redis backend fails the run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def redis_module_server() -> Iterator[RedisServer | None]:
    """The private server behind ``redis_url`` (``None`` when that is XRAPTOR_REDIS_URL).

    A test may stop and start it, and must leave it running.
    """
    if REDIS_BINARY is not None:
        server = RedisServer()
        server.start()
        try:
            yield server
        finally:
            server.kill()
    elif EXTERNAL_URL:
        yield None
    else:
        _no_backend("no redis-server on PATH and XRAPTOR_REDIS_URL is not set")


@pytest.fixture(scope="module")
def redis_url(redis_module_server: RedisServer | None) -> str:
    """A Redis URL shared by the tests of one module (private server when possible)."""
    if redis_module_server is not None:
        return redis_module_server.url
    assert EXTERNAL_URL
    return EXTERNAL_URL


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private server for one test, which it may kill (-9) and restart on the same port."""
    if REDIS_BINARY is None:
        if EXTERNAL_URL:
            pytest.skip(
                "fault injection needs redis-server on PATH "
                "(the server at XRAPTOR_REDIS_URL cannot be restarted)"
            )
        _no_backend("no redis-server on PATH and XRAPTOR_REDIS_URL is not set")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def script_process(script: Path, url: str, **env: str) -> ServerProcess:
    """A test server script run as a process (``python SCRIPT REDIS_URL``, with ``env``);
    the script prints its port on its first line (``serve_until_terminated``)."""
    return ServerProcess([sys.executable, str(script), url], env=env)
