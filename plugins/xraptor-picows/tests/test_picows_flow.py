"""Flow control, logging, and ``xraptor run --transport picows``."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from picows_support import TEXT, AppFactory, RawSocket, request_text

from xraptor import Client, Request, Response, XRaptor
from xraptor_picows.connection import PicowsConnection


def _big_routes(app: XRaptor) -> None:
    @app.register("/big").as_get
    async def big(request: Request) -> Response:
        return Response.create(request.request_id, {}, "x" * 200_000)


async def test_answers_wait_for_a_client_that_reads_slowly(make_app: AppFactory) -> None:
    """The transport asks to pause writing: answers wait (send()) rather than pile up,
    and every one arrives once the client reads again."""
    app = await make_app(_big_routes)
    raw = await RawSocket.connect(app.port)
    raw.writer.transport.pause_reading()  # type: ignore[attr-defined]
    for n in range(60):
        raw.send_frame(TEXT, request_text(f"b{n}", "/big").encode())
    (connection,) = app._connections
    assert isinstance(connection, PicowsConnection)
    deadline = time.monotonic() + 5
    while not connection.socket.writing_paused and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert connection.socket.writing_paused
    buffered = connection.buffered()
    await asyncio.sleep(0.2)
    assert connection.buffered() <= buffered + 300_000  # waiting, not piling up
    raw.writer.transport.resume_reading()  # type: ignore[attr-defined]
    ids = [(await raw.recv_json())["request_id"] for _ in range(60)]
    assert sorted(ids) == sorted(f"b{n}" for n in range(60))
    raw.close()


async def test_connections_are_not_logged_above_debug(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app(max_size=150)
    with caplog.at_level(logging.INFO):
        async with Client(f"ws://127.0.0.1:{app.port}", token="s3cret") as client:
            await client.get("/echo", "hi")
        raw = await RawSocket.connect(app.port)
        raw.send_frame(TEXT, b"x" * 200)  # a protocol failure (1009) is the client's fault
        assert (await raw.close_code())[0] == 1009
    assert [r for r in caplog.records if r.name.startswith("xraptor.picows")] == []
    with caplog.at_level(logging.DEBUG):
        caplog.clear()
        async with Client(f"ws://127.0.0.1:{app.port}", token="s3cret") as client:
            await client.get("/echo", "hi")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "New connection accepted" in text  # picows' line, at DEBUG
    assert "s3cret" not in text


APP = textwrap.dedent(
    """
    import asyncio

    import xraptor

    app = xraptor.XRaptor(drain_timeout=5, close_timeout=1)


    @app.register("/slow").as_get
    async def slow(request):
        await asyncio.sleep(float(request.payload))
        return xraptor.Response.create(request.request_id, {}, "done")


    @app.register("/loop").as_get
    async def loop(request):
        return xraptor.Response.create(
            request.request_id, {}, type(asyncio.get_running_loop()).__module__
        )
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_xraptor_run_serves_and_drains_on_picows(tmp_path: Path) -> None:
    """``xraptor run --transport picows`` (on uvloop when it is installed) serves, then
    drains on SIGTERM: the request in flight is answered, the connection closed with 1001."""
    (tmp_path / "picowsapp.py").write_text(APP)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "xraptor.cli", "run", "picowsapp:app", "--port", str(port),
         "--transport", "picows"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)

        async def drive() -> tuple[str, str, int | None]:
            raw = await RawSocket.connect(port)
            raw.send_frame(TEXT, request_text("loop", "/loop").encode())
            loop = (await raw.recv_json())["payload"]
            raw.send_frame(TEXT, request_text("slow", "/slow", "0.5").encode())
            await asyncio.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            answer = (await raw.recv_json())["payload"]
            return loop, answer, (await raw.close_code())[0]

        loop, answer, code = asyncio.run(drive())
        output = process.communicate(timeout=20)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert (answer, code, process.returncode) == ("done", 1001, 0), output
    assert "transport picows" in output
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        assert loop.startswith("asyncio")
    else:
        assert loop == "uvloop"
    assert json.dumps(loop)
