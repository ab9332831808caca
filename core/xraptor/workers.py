"""The supervisor of ``xraptor run --workers N`` and the worker side of it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import XRaptor

logger = logging.getLogger("xraptor.cli")

#: seconds the parent of ``--workers N`` waits for its workers to stop after SIGTERM,
#: beyond the app's ``drain_timeout + close_timeout``
WORKER_GRACE = 10.0

#: seconds between a worker's checks that its supervisor is still alive
PARENT_CHECK = 1.0


async def serve_worker(app: XRaptor, parent: int) -> None:
    """Serve until SIGTERM, or until the supervisor is gone (killed with SIGKILL)."""

    async def watch_parent() -> None:
        while os.getppid() == parent:  # noqa: ASYNC110  (no event tells of a parent's death)
            await asyncio.sleep(PARENT_CHECK)
        logger.warning("the supervisor (pid %d) is gone; stopping this worker", parent)
        app.stop()

    watcher = asyncio.get_running_loop().create_task(watch_parent())
    try:
        await app.serve()
    finally:
        watcher.cancel()


def supervise(command: list[str], app: XRaptor, workers: int) -> int:
    """Start ``workers`` processes running ``command``, forward SIGTERM/SIGINT, wait for all.

    A worker that exits on its own stops the others: restarting is left to the
    process manager (systemd, Kubernetes, ...), which sees the exit code.
    """
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            logger.info("received %s: stopping %d workers", signal.Signals(signum).name, workers)
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(workers):
            processes.append(subprocess.Popen(command))
        logger.info(
            "xraptor: %d workers on %s:%d (pids %s)",
            workers,
            app.host,
            app.port,
            " ".join(str(p.pid) for p in processes),
        )
        failed: int | None = None
        while not stopping:
            for process in processes:
                code = process.poll()
                if code is not None:
                    logger.error("worker %d exited with code %d; stopping", process.pid, code)
                    failed = code or 1
                    stopping = True
                    break
            else:
                time.sleep(0.1)
        code = _stop_workers(processes, worker_grace(app))
        return code if failed is None else failed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_grace(app: XRaptor) -> float:
    """Seconds a worker gets to stop after SIGTERM: its drain, its closes, and a margin."""
    return app.drain_timeout + app.close_timeout + WORKER_GRACE


def _stop_workers(processes: Sequence[subprocess.Popen[bytes]], grace: float) -> int:
    """SIGTERM every live worker (they drain), wait, then kill the stragglers."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    code = 0
    for process in processes:
        try:
            result = process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("worker %d did not stop in %.0f s; killing it", process.pid, grace)
            process.kill()
            result = process.wait()
        if result not in (0, -signal.SIGTERM):
            code = 1
    return code
