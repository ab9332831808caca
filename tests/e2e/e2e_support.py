"""End-to-end helpers: real processes on free ports, and CI's no-skip rule.

Under ``CI=true`` a missing tool (chromium, redis-server, playwright) fails the
test; elsewhere it skips with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xraptor import Client

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """Skip, or fail under CI=true."""
    if under_ci():
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, path: str | None = None) -> str:
    found = path if path is not None and os.access(path, os.X_OK) else shutil.which(name)
    if found is None:
        missing(f"{name} is not installed (apt-get install -y {name})")
    assert found is not None
    return found


def require_module(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        missing(f"the Python package {name!r} is not installed (pip install {name})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"process exited with {process.returncode}: {output}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def xraptor_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "xraptor.cli", *args]


@contextlib.contextmanager
def running(
    command: list[str], port: int, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``, wait until ``port`` accepts, SIGTERM it afterwards."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def join_chat(page: Any, url: str, room: str, name: str) -> None:
    """Open the chat page at ``url`` and join ``room`` as ``name``."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-connected", "yes")
    page.fill("#room", room)
    page.fill("#name", name)
    page.click("#join-button")
    expect(page.locator("body")).to_have_attribute("data-joined", "yes")


#: clients opened at least, to spread over the workers
CLIENTS = 12


async def chat_across_workers(url: str, worker_pids: set[str] | None, workers: int = 2) -> None:
    """Clients spread over the workers of one port chat in one room: each message
    arrives exactly once at every member (``worker_pids``: the workers' pids, or
    ``None`` to accept any ``workers`` distinct ones)."""
    clients: list[Client] = []
    where: list[str] = []
    try:
        # the kernel hashes each connection to a worker: connect until both have some
        def spread() -> bool:
            seen = set(where)
            return seen == worker_pids if worker_pids is not None else len(seen) == workers

        # (or, with a shared listening socket, whichever worker accepts first: workers
        # still starting get none, so keep trying for a while, a little apart)
        deadline = asyncio.get_running_loop().time() + 20
        while len(clients) < CLIENTS or (
            not spread() and len(clients) < 200 and asyncio.get_running_loop().time() < deadline
        ):
            client = Client(url, timeout=10)
            clients.append(client)
            await client.connect()
            where.append((await client.get("/pid")).payload)
            if len(clients) >= CLIENTS:
                await asyncio.sleep(0.05)
        assert spread(), f"the {len(clients)} clients went to {set(where)} only"
        streams = [
            client.subscribe("/chat_messages", {"chat_id": "spanning"}) for client in clients
        ]
        for stream in streams:
            await stream.__aenter__()
        # each worker has processed its SUBs before it answers the next request
        for client in clients:
            await client.get("/pid")
        reply = await clients[0].post(
            "/send_message_to_chat_room",
            {"chat_id": "spanning", "client_id": "alice", "message": "hello, both workers"},
        )
        assert reply.payload == '{"message": "Message sent"}'
        for stream in streams:
            push = await asyncio.wait_for(anext(stream), 10)
            assert json.loads(push.payload) == {"origin": "alice", "message": "hello, both workers"}
        # exactly once: nothing else arrives
        await asyncio.sleep(0.5)
        for stream in streams:
            assert not stream._queue, f"duplicate delivery: {list(stream._queue)}"
        for stream in streams:
            await stream.__aexit__(None, None, None)
    finally:
        for client in clients:
            await client.close()
