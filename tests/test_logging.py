"""Logging: the start-up line, websockets kept quiet, an app's or a file's configuration wins."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import xraptor
from core_support import free_port, start_run, wait_for_port
from output_support import Output

#: a script that serves like the README's quick start; PORT and SETUP are filled in
SCRIPT = """
import asyncio
import logging

import xraptor

SETUP

@xraptor.XRaptor.register("/hello").as_get
async def hello(request):
    logging.getLogger("app").info("handling %s", request.method)
    return xraptor.Response.create(request.request_id, {}, "hi")


app = xraptor.XRaptor("127.0.0.1", PORT)

if __name__ == "__main__":
    asyncio.run(app.load_routes().serve())
"""


def _script(directory: Path, port: int, setup: str = "") -> Path:
    path = directory / "logapp.py"
    path.write_text(SCRIPT.replace("PORT", str(port)).replace("SETUP", setup))
    return path


def _traffic(port: int) -> None:
    """A plain HTTP GET (/health) and a WebSocket request: what websockets logs at INFO."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
        assert answer.status == 200

    async def hello() -> None:
        async with xraptor.Client(f"ws://127.0.0.1:{port}", timeout=5) as client:
            assert (await client.get("/hello")).payload == "hi"

    asyncio.run(hello())


def _stop(process: subprocess.Popen[str], output: Output) -> str:
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0, output.text()
    return output.text()


def _follow(command: list[str], cwd: Path, port: int) -> tuple[subprocess.Popen[str], Output]:
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    output = Output(process.stdout)
    wait_for_port(port, process)
    return process, output


def test_a_plain_script_says_where_it_listens_once(tmp_path: Path) -> None:
    """No logging configuration at all: serve() shows xraptor's start-up line on stderr."""
    port = free_port()
    script = _script(tmp_path, port)
    process, output = _follow([sys.executable, str(script)], tmp_path, port)
    line = output.wait_for("listening on")
    assert line.rstrip().endswith(
        f"INFO xraptor: xraptor listening on ws://127.0.0.1:{port} "
        "(antenna memory, transport websockets)"
    )
    _traffic(port)
    text = _stop(process, output)
    assert text.count("xraptor listening on") == 1
    assert "xraptor stopped listening on" in text
    for websockets_line in ("HTTP response sent", "connection open", "connection closed"):
        assert websockets_line not in text
    assert "handling" not in text  # the app's own INFO logs: not configured, not shown


def test_xraptor_run_quiets_websockets_unless_debug(tmp_path: Path) -> None:
    port = free_port()
    _script(tmp_path, port)
    process, output = _follow(
        [sys.executable, "-m", "xraptor.cli", "run", "logapp:app"], tmp_path, port
    )
    output.wait_for("xraptor listening on")
    _traffic(port)
    text = _stop(process, output)
    assert "handling GET" in text  # the root logger at INFO: the app's lines show
    assert "HTTP response sent" not in text and "connection open" not in text

    process, output = _follow(
        [sys.executable, "-m", "xraptor.cli", "--log-level", "debug", "run", "logapp:app"],
        tmp_path,
        port,
    )
    output.wait_for("xraptor listening on")
    _traffic(port)
    output.wait_for("connection closed")
    text = _stop(process, output)
    assert "HTTP response sent (200 OK)" in text and "connection open" in text


def test_an_app_that_configures_logging_keeps_its_configuration(tmp_path: Path) -> None:
    port = free_port()
    setup = (
        'logging.basicConfig(level=logging.INFO, format="APP|%(levelname)s|%(name)s|%(message)s")'
    )
    _script(tmp_path, port, setup)
    process, output = _follow(
        [sys.executable, "-m", "xraptor.cli", "run", "logapp:app"], tmp_path, port
    )
    line = output.wait_for("xraptor listening on")
    assert line.startswith("APP|INFO|xraptor|xraptor listening on"), line
    _traffic(port)
    output.wait_for("APP|INFO|app|handling GET")
    text = _stop(process, output)
    assert " INFO " not in text  # no line in xraptor's own format: basicConfig was the app's


LOG_CONFIGS = {
    "json": json.dumps(
        {
            "version": 1,
            "formatters": {"plain": {"format": "CFG %(levelname)s %(name)s: %(message)s"}},
            "handlers": {
                "out": {
                    "class": "logging.StreamHandler",
                    "formatter": "plain",
                    "stream": "ext://sys.stdout",
                }
            },
            "loggers": {"xraptor": {"level": "INFO"}, "app": {"level": "WARNING"}},
            "root": {"level": "INFO", "handlers": ["out"]},
        }
    ),
    "ini": """
[loggers]
keys=root,app

[handlers]
keys=out

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=out

[logger_app]
level=WARNING
handlers=
qualname=app

[handler_out]
class=StreamHandler
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=CFG %(levelname)s %(name)s: %(message)s
""",
}


@pytest.mark.parametrize("kind", sorted(LOG_CONFIGS))
def test_log_config_file_configures_logging(tmp_path: Path, kind: str) -> None:
    port = free_port()
    _script(tmp_path, port)
    (tmp_path / f"logging.{kind}").write_text(LOG_CONFIGS[kind])
    process = start_run(
        tmp_path, "logapp:app", "--log-config", f"logging.{kind}", env={"XRAPTOR_PORT": str(port)}
    )
    assert process.stdout is not None
    output = Output(process.stdout)
    wait_for_port(port, process)
    line = output.wait_for("listening on")
    assert line.startswith(f"CFG INFO xraptor: xraptor listening on ws://127.0.0.1:{port}"), line
    _traffic(port)
    text = _stop(process, output)
    assert "handling" not in text  # the file set the app's logger to WARNING
    assert "connection open" not in text


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.json", "no such logging configuration file"),
        ("{not json", "bad.json", "cannot apply bad.json"),
        ('{"version": 1, "handlers": {"h": {"class": "no.Such"}}}', "wrong.json", "cannot apply"),
        ("[loggers]\nkeys=root\n", "broken.ini", "cannot apply broken.ini"),
    ],
)
def test_a_bad_log_config_is_a_usage_error(
    tmp_path: Path, content: str | None, name: str, message: str
) -> None:
    _script(tmp_path, free_port())
    if content is not None:
        (tmp_path / name).write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "xraptor.cli", "run", "logapp:app", "--log-config", name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xraptor.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"xraptor {xraptor.__version__}"
    from importlib.metadata import version

    assert xraptor.__version__ == version("xraptor")


def test_xraptor_itself_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``XRAPTOR_*`` variables are a ``xraptor run`` feature; ``XRaptor()`` takes arguments."""
    for name, value in {
        "XRAPTOR_HOST": "0.0.0.0",
        "XRAPTOR_PORT": "9999",
        "XRAPTOR_ANTENNA": "nats://127.0.0.1:4222",
        "XRAPTOR_ORIGINS": "*",
    }.items():
        monkeypatch.setenv(name, value)
    app = xraptor.XRaptor()
    assert (app.host, app.port, app.antenna.name) == ("127.0.0.1", 8765, "memory")
    assert app._origin_policy.describe() == "same-origin pages only"
