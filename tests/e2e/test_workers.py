"""`xraptor run --workers 2` over a private Redis: one room spans both workers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from e2e_support import free_port, require_binary, running, wait_for_port, xraptor_command

from xraptor import Client

APP = textwrap.dedent(
    """
    import os

    import xraptor
    from xraptor import demo  # noqa: F401  (registers the chat routes)


    @xraptor.XRaptor.register("/pid").as_get
    async def pid(request):
        return xraptor.Response.create(request.request_id, {}, str(os.getpid()))


    app = xraptor.XRaptor("127.0.0.1", 8765)
    """
)

CLIENTS = 12


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port (never the shared one on 6379)."""
    binary = require_binary("redis-server")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


async def _chat_across_workers(port: int, worker_pids: set[str]) -> None:
    url = f"ws://127.0.0.1:{port}"
    clients: list[Client] = []
    where: list[str] = []
    try:
        # the kernel hashes each connection to a worker: connect until both have some
        while len(clients) < CLIENTS or (set(where) != worker_pids and len(clients) < 64):
            client = Client(url, timeout=10)
            clients.append(client)
            await client.connect()
            where.append((await client.get("/pid")).payload)
        assert set(where) == worker_pids, f"all {len(clients)} clients went to one worker"
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


def test_a_room_spans_two_workers_over_redis(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "chatapp.py").write_text(APP)
    port = free_port()
    command = xraptor_command(
        "run", "chatapp:app", "--workers", "2", "--antenna", redis_url, "--port", str(port)
    )
    with running(command, port, cwd=tmp_path) as parent:
        supervisor = psutil.Process(parent.pid)
        deadline = time.monotonic() + 20
        while len(supervisor.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = supervisor.children()
        assert len(workers) == 2
        pids = {str(worker.pid) for worker in workers}
        for worker in workers:  # both listening before the clients connect
            while time.monotonic() < deadline and not any(
                c.laddr.port == port and c.status == psutil.CONN_LISTEN
                for c in worker.net_connections("tcp")
            ):
                time.sleep(0.05)
        asyncio.run(_chat_across_workers(port, pids))

        parent.send_signal(signal.SIGTERM)
        output = parent.communicate(timeout=40)[0].decode(errors="replace")
        assert parent.returncode == 0, output
        # the parent exits 0 only when every worker drained and exited cleanly
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers still running after SIGTERM: {alive}"
        assert output.count("xraptor stopped listening on") == 2, output
