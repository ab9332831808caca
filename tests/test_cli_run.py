"""`xraptor run MODULE:ATTR`: loading the app, options and env vars, workers, signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from core_support import free_port, start_run, wait_for_port
from xraptor import Client, XRaptor, cli

APP = """
import xraptor


@xraptor.XRaptor.register("/whoami").as_get
async def whoami(request):
    import os
    return xraptor.Response.create(request.request_id, {}, str(os.getpid()))


app = xraptor.XRaptor("127.0.0.1", 8765EXTRA)
not_an_app = 42
"""

#: a memory antenna under another name: lets the core tests run the worker
#: supervisor without a backend (each worker then has its own rooms)
SHARED_APP = """
from typing import ClassVar

from xraptor.antennas import MemoryAntenna


class PretendShared(MemoryAntenna):
    name: ClassVar[str] = "pretend-shared"
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory with app modules, as the current directory (as `xraptor run` expects)."""
    (tmp_path / "cliapp.py").write_text(APP.replace("EXTRA", ""))
    (tmp_path / "cliapp_shared.py").write_text(
        SHARED_APP + APP.replace("EXTRA", ", antenna=PretendShared()")
    )
    monkeypatch.chdir(tmp_path)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    for module in ("cliapp", "cliapp_shared"):
        sys.modules.pop(module, None)
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


ENV_NAMES = list(cli.ENV.values())


def _configure(*argv: str) -> tuple[XRaptor, int]:
    args = cli.build_parser().parse_args(["run", *argv])
    return cli._configure(args)


def test_load_app_and_defaults(app_dir: Path) -> None:
    app, workers = _configure("cliapp:app")
    assert isinstance(app, XRaptor)
    assert (app.host, app.port, workers, app.antenna.name) == ("127.0.0.1", 8765, 1, "memory")


def test_env_vars_apply_and_flags_win(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XRAPTOR_HOST", "0.0.0.0")
    monkeypatch.setenv("XRAPTOR_PORT", "9001")
    monkeypatch.setenv("XRAPTOR_ANTENNA", "memory://")
    app, workers = _configure("cliapp:app")
    assert (app.host, app.port, workers) == ("0.0.0.0", 9001, 1)
    sys.modules.pop("cliapp", None)
    app, workers = _configure("cliapp:app", "--port", "9002", "--host", "127.0.0.2")
    assert (app.host, app.port) == ("127.0.0.2", 9002)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cliapp"], "expected MODULE:ATTR"),
        (["no_such_module_xyz:app"], "cannot import module 'no_such_module_xyz'"),
        (["cliapp:nope"], "has no attribute 'nope'"),
        (["cliapp:not_an_app"], "is a int, not an xraptor.XRaptor"),
        (["cliapp:app", "--port", "http"], "port must be an integer"),
        (["cliapp:app", "--port", "70000"], "port must be from 0 to 65535"),
        (["cliapp:app", "--workers", "0"], "workers must be at least 1"),
        (["cliapp:app", "--workers", "2"], "needs an antenna that spans processes"),
        (["cliapp_shared:app", "--workers", "2", "--port", "0"], "needs a fixed --port"),
    ],
)
def test_usage_errors_exit_2(
    app_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(["run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_memory_antenna_with_workers_from_env_is_refused(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XRAPTOR_WORKERS", "3")
    assert cli.main(["run", "cliapp:app"]) == 2
    err = capsys.readouterr().err
    assert "--workers 3" in err and "memory antenna" in err


def test_unknown_log_level_is_a_usage_error(app_dir: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "cliapp:app", "--log-level", "chatty"])
    assert exited.value.code == 2


def _two_workers(port: int, process: subprocess.Popen[str]) -> list[psutil.Process]:
    """Wait until ``xraptor run --workers 2`` listens and has started both workers."""
    wait_for_port(port, process)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 20
    while len(parent.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = parent.children()
    assert len(workers) == 2
    return workers


async def _whoami(port: int) -> str:
    async with Client(f"ws://127.0.0.1:{port}", timeout=5) as client:
        return (await client.get("/whoami")).payload


def test_run_serves_and_stops_on_sigterm(app_dir: Path) -> None:
    port = free_port()
    process = start_run(
        app_dir, "cliapp:app", env={"XRAPTOR_PORT": str(port), "XRAPTOR_LOG_LEVEL": "debug"}
    )
    try:
        wait_for_port(port, process)
        assert asyncio.run(_whoami(port)) == str(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 0, output
    assert "DEBUG" in output  # XRAPTOR_LOG_LEVEL applied


def test_workers_share_the_port_and_stop_on_sigterm(app_dir: Path) -> None:
    port = free_port()
    process = start_run(app_dir, "cliapp_shared:app", "--workers", "2", "--port", str(port))
    try:
        workers = _two_workers(port, process)
        pids = {str(worker.pid) for worker in workers}
        # both bind the port (SO_REUSEPORT); the kernel spreads connections over them
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            listening = {
                str(c.pid)
                for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
            }
            if listening >= pids:
                break
            time.sleep(0.1)
        seen = {asyncio.run(_whoami(port)) for _ in range(40)}
        assert seen <= pids
        assert len(seen) == 2, "40 connections all went to one worker"
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=40)[0]
    assert process.returncode == 0, output
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


def test_a_crashing_worker_stops_the_others(app_dir: Path) -> None:
    port = free_port()
    process = start_run(app_dir, "cliapp_shared:app", "--workers", "2", "--port", str(port))
    try:
        workers = _two_workers(port, process)
        workers[0].kill()
        output = process.communicate(timeout=40)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0
    assert "exited with code" in output
    assert not workers[1].is_running() or workers[1].status() == psutil.STATUS_ZOMBIE


def test_workers_stop_when_the_supervisor_is_killed(app_dir: Path) -> None:
    port = free_port()
    process = start_run(app_dir, "cliapp_shared:app", "--workers", "2", "--port", str(port))
    try:
        workers = _two_workers(port, process)
        process.kill()  # SIGKILL: no chance to forward anything
        process.wait()
        _, alive = psutil.wait_procs(workers, timeout=15)
        for orphan in alive:  # don't leave them holding the port and the pipe
            orphan.kill()
        assert not alive, "orphaned workers kept running"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=20)


# ----- --origin / XRAPTOR_ORIGINS -----------------------------------------------------------


def test_origins_from_flags_or_env(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = _configure("cliapp:app")
    assert app._origin_policy.describe() == "same-origin pages only"
    sys.modules.pop("cliapp", None)
    monkeypatch.setenv("XRAPTOR_ORIGINS", "https://a.example, http://localhost:8000")
    app, _ = _configure("cliapp:app")
    assert app._origin_policy.describe() == "http://localhost:8000, https://a.example"
    sys.modules.pop("cliapp", None)
    app, _ = _configure("cliapp:app", "--origin", "*")
    assert app._origin_policy.describe() == "every origin"  # flags win
    sys.modules.pop("cliapp", None)
    app, _ = _configure("cliapp:app", "--origin", "https://b.example")
    assert app._origin_policy.describe() == "https://b.example"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--origin", "null"], "", "--origin: origins cannot allow 'null'"),
        ([], "app.example", "XRAPTOR_ORIGINS: invalid entry in origins: 'app.example'"),
    ],
)
def test_a_bad_origin_is_a_usage_error(
    app_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: str,
    message: str,
) -> None:
    if env:
        monkeypatch.setenv("XRAPTOR_ORIGINS", env)
    assert cli.main(["run", "cliapp:app", *argv]) == 2
    assert message in capsys.readouterr().err


def test_workers_get_the_origins(app_dir: Path) -> None:
    args = cli.build_parser().parse_args(
        ["run", "cliapp_shared:app", "--origin", "https://a.example", "--origin", "https://b.x"]
    )
    app, _ = cli._configure(args)
    command = cli._worker_command(args, app)
    assert command[-4:] == ["--origin", "https://a.example", "--origin", "https://b.x"]


async def _upgrade_status(port: int, origin: str) -> int:
    from handshake_support import raw_get

    return (await raw_get(port, headers=[("Origin", origin)])).status


@pytest.mark.parametrize("source", ["flag", "env"])
def test_run_applies_the_origins(app_dir: Path, source: str) -> None:
    port = free_port()
    allowed = "https://app.example"
    argv = ["cliapp:app", "--port", str(port)]
    env = {}
    if source == "flag":
        argv += ["--origin", allowed, "--origin", "http://localhost:1"]
    else:
        env["XRAPTOR_ORIGINS"] = f"{allowed},http://localhost:1"
    process = start_run(app_dir, *argv, env=env)
    try:
        wait_for_port(port, process)
        assert asyncio.run(_upgrade_status(port, allowed)) == 101
        assert asyncio.run(_upgrade_status(port, "http://localhost:1")) == 101
        assert asyncio.run(_upgrade_status(port, f"http://127.0.0.1:{port}")) == 403
        assert asyncio.run(_upgrade_status(port, "https://evil.example")) == 403
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 0, output
    # the first refusal is the INFO sample (the next, within 5 s, is at DEBUG)
    assert "refused a WebSocket upgrade" in output and f"'http://127.0.0.1:{port}'" in output
