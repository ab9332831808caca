"""``xraptor run --reload``: a real process restarts its server when the app file changes."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

import xraptor
from core_support import free_port, start_run, wait_for_port
from output_support import Output
from xraptor import cli

APP = """
import os

import xraptor


@xraptor.XRaptor.register("/pid").as_get
async def pid(request):
    return xraptor.Response.create(request.request_id, {}, str(os.getpid()))

ROUTES
app = xraptor.XRaptor("127.0.0.1", PORT)
"""

NEW_ROUTE = """
@xraptor.XRaptor.register("/added").as_get
async def added(request):
    return xraptor.Response.create(request.request_id, {}, "added after a reload")

"""


async def _get(port: int, route: str) -> xraptor.Response:
    async with xraptor.Client(f"ws://127.0.0.1:{port}", timeout=5, raise_errors=False) as client:
        return await client.get(route)


def _until_answered(port: int, route: str, timeout: float = 30) -> xraptor.Response:
    """GET ``route`` until it answers without error (the server restarts meanwhile)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = asyncio.run(_get(port, route))
        except OSError as error:  # restarting: nobody listens for a moment
            last = error
        else:
            if "error" not in response.header:
                return response
            last = response
        time.sleep(0.2)
    raise AssertionError(f"{route} never answered; last: {last!r}")


def test_reload_restarts_the_server_when_the_app_changes(tmp_path: Path) -> None:
    port = free_port()
    app_file = tmp_path / "reloadapp.py"
    app_file.write_text(APP.replace("PORT", str(port)).replace("ROUTES", ""))
    process = start_run(tmp_path, "reloadapp:app", "--reload")
    assert process.stdout is not None
    output = Output(process.stdout)
    try:
        wait_for_port(port, process)
        output.wait_for("xraptor listening on")
        first = int(asyncio.run(_get(port, "/pid")).payload)
        assert first != process.pid and psutil.Process(first).ppid() == process.pid
        missing = asyncio.run(_get(port, "/added"))
        assert missing.header.get("error") == "unknown_route"

        app_file.write_text(APP.replace("PORT", str(port)).replace("ROUTES", NEW_ROUTE))
        assert _until_answered(port, "/added").payload == "added after a reload"
        output.wait_for("reloadapp.py changed; restarting")
        second = int(asyncio.run(_get(port, "/pid")).payload)
        assert second != first and psutil.Process(second).ppid() == process.pid
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert "Traceback" not in output.text()
    children = [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == process.pid]
    assert children == []


def test_reload_with_several_workers_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "anything:app", "--reload", "--workers", "2"]) == 2
    assert "--reload runs one server process" in capsys.readouterr().err


def test_reload_without_watchfiles_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import watchfiles -> ImportError
    assert cli.main(["run", "anything:app", "--reload"]) == 2
    assert "pip install 'xraptor[reload]'" in capsys.readouterr().err


def test_reload_passes_the_flags_on_without_reload() -> None:
    args = cli.build_parser().parse_args(
        ["--log-level", "debug", "run", "m:app", "--port", "9000", "--origin", "*", "--reload"]
    )
    args.log_level, args.log_level_explicit = "DEBUG", True
    command = cli.reload_command(args)
    assert command[1:] == [
        "-m", "xraptor.cli", "--log-level", "DEBUG", "run", "m:app", "--port", "9000", "--origin", "*",
    ]  # fmt: skip
