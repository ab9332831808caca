"""``xraptor run --compression`` and ``XRAPTOR_COMPRESSION``."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from core_support import free_port, start_run, wait_for_port
from xraptor import XRaptor, cli

APP = """
import xraptor

app = xraptor.XRaptor("127.0.0.1", 8765)
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "compressapp.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    for name in cli.ENV.values():
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    sys.modules.pop("compressapp", None)
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def _configure(*argv: str) -> XRaptor:
    sys.modules.pop("compressapp", None)
    args = cli.build_parser().parse_args(["run", "compressapp:app", *argv])
    return cli._configure(args)[0]


def test_flag_and_env_set_the_policy(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _configure().compression == "shared"
    assert _configure("--compression", "none").compression is None
    assert _configure("--compression", "deflate").compression == "deflate"
    monkeypatch.setenv("XRAPTOR_COMPRESSION", "none")
    assert _configure().compression is None
    assert _configure("--compression", "shared").compression == "shared"  # flags win


@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_wrong_policy_is_a_usage_error(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    argv = ["run", "compressapp:app"]
    if source == "flag":
        argv += ["--compression", "gzip"]
    else:
        monkeypatch.setenv("XRAPTOR_COMPRESSION", "gzip")
    assert cli.main(argv) == 2
    assert "compression must be shared, deflate or none, got 'gzip'" in capsys.readouterr().err


def test_workers_and_reloads_get_the_policy(app_dir: Path) -> None:
    args = cli.build_parser().parse_args(["run", "compressapp:app", "--compression", "none"])
    app, _ = cli._configure(args)
    assert cli._worker_command(args, app)[-2:] == ["--compression", "none"]
    assert cli.reload_command(args)[-2:] == ["--compression", "none"]


async def _negotiated(port: int) -> str | None:
    async with connect(f"ws://127.0.0.1:{port}") as ws:  # offers permessage-deflate
        assert ws.response is not None
        value: str | None = ws.response.headers.get("Sec-WebSocket-Extensions")
        return value


@pytest.mark.parametrize("policy", ["none", "shared"])
def test_run_serves_with_the_policy(app_dir: Path, policy: str) -> None:
    port = free_port()
    process = start_run(app_dir, "compressapp:app", "--port", str(port), "--compression", policy)
    try:
        wait_for_port(port, process)
        negotiated = asyncio.run(_negotiated(port))
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 0, output
    if policy == "none":
        assert negotiated is None
    else:
        assert negotiated is not None and "server_no_context_takeover" in negotiated
