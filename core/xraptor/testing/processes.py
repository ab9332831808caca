"""Servers in processes of their own, for end-to-end tests across processes.

* :class:`ServerProcess`: a command that serves an app (``xraptor run``, a script of the
  test suite), started at once and stopped on :meth:`~ServerProcess.stop` or on leaving
  its ``with`` block (``with ServerProcess(...) as first, ServerProcess(...) as second:``
  stops the first also when the second does not start). Its port is either given (the
  process is ready once ``/health`` answers there) or printed by the process on its
  first line of output (a script that binds port 0 and ends with
  :func:`serve_until_terminated`).
* :func:`serve_until_terminated`: what such a script runs: start the app, print its
  port, serve until SIGTERM or SIGINT, close.
* :func:`free_port`: a free loopback port (to give one to a process).
* :func:`xraptor_run`: the command line of ``xraptor run`` in this Python.

A process's standard error (and its output past the port line) goes where the test
runner's goes: pytest shows it with the test's captured output when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from ..server import XRaptor
from .http import health

__all__ = [
    "ServerProcess",
    "free_port",
    "serve_until_terminated",
    "xraptor_run",
]

P = TypeVar("P", bound="ServerProcess")


def free_port() -> int:
    """A loopback TCP port that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def xraptor_run(*args: str) -> list[str]:
    """``xraptor run ARGS...`` in the running Python (``python -m xraptor run ...``)."""
    return [sys.executable, "-m", "xraptor", "run", *args]


class ServerProcess:
    """One server process on loopback (a context manager that stops it).

    :param command: its command line
    :param port: the port it serves on: it is ready once ``/health`` answers there (any
        status: 503 while its antenna is down); ``None``: it prints its port on its
        first line of output, and is ready then
    :param env: variables added to this process's environment (``PYTHONUNBUFFERED=1``
        is always set)
    :param cwd: its working directory
    :param timeout: seconds it may take to be ready
    :raises RuntimeError: it exited, or was not ready within ``timeout`` (it is then
        stopped)
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 20.0,
    ) -> None:
        #: how messages name it: its script or module
        self.name = next((Path(a).name for a in command[1:] if not a.startswith("-")), "")
        self.process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE if port is None else None,
        )
        try:
            self.port = self._read_port() if port is None else self._wait_health(port, timeout)
        except BaseException:
            self.stop()
            raise
        self.url = f"ws://127.0.0.1:{self.port}"

    def _read_port(self) -> int:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"{self.name} did not start (printed {line!r})")
        return int(line)

    def _wait_health(self, port: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                health(port, timeout=2)
                return port
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with code {self.process.returncode} before "
                        "serving /health (its output is in the test's captured output)"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not serve /health on port {port} within {timeout} s"
                    ) from None
                time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        """The ``/health`` document (served with status 503 while the antenna is down)."""
        return health(self.port, timeout=2)[1]

    def kill(self) -> None:
        """SIGKILL: the process ends without cleaning anything up."""
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def serve_until_terminated(app: XRaptor) -> None:
    """Start ``app``, print its port on a line of its own, serve until SIGTERM or
    SIGINT, then close it. What a server script for :class:`ServerProcess` runs."""
    await app.start()
    print(app.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await app.close()
