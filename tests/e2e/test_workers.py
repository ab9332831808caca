"""`xraptor run --workers 2` over a private Redis: one room spans both workers, on each
listening transport (the e2e session installs the xraptor-picows plugin)."""

from __future__ import annotations

import asyncio
import signal
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from e2e_support import (
    chat_across_workers,
    free_port,
    running,
    xraptor_command,
)

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


@pytest.mark.parametrize("transport", ["websockets", "picows"])
def test_a_room_spans_two_workers_over_redis(
    tmp_path: Path, redis_url: str, transport: str
) -> None:
    (tmp_path / "chatapp.py").write_text(APP)
    port = free_port()
    command = xraptor_command(
        "run", "chatapp:app", "--workers", "2", "--antenna", redis_url, "--port", str(port),
        "--transport", transport,
    )  # fmt: skip
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
        asyncio.run(chat_across_workers(f"ws://127.0.0.1:{port}", pids))

        parent.send_signal(signal.SIGTERM)
        output = parent.communicate(timeout=40)[0].decode(errors="replace")
        assert parent.returncode == 0, output
        # the parent exits 0 only when every worker drained and exited cleanly
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers still running after SIGTERM: {alive}"
        assert output.count("xraptor stopped listening on") == 2, output
        assert output.count(f"transport {transport})") == 2, output
