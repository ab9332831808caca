"""The browser client's token and the Origin policy in headless Chromium.

A real ``xraptor run`` process at DEBUG level, a page it serves that connects with
``XRaptorClient.connect(url, {token})``; the server's log must not hold the token.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import free_port, wait_for_port, xraptor_command

#: not ASCII, and its base64 has '+' and '/': the encoding is exercised
TOKEN = "tök€n-s3cret?>>~~"

APP = """
import json

import xraptor

app = xraptor.XRaptor("127.0.0.1", 0)


@app.on_connect
async def authenticate(handshake: xraptor.Handshake) -> object:
    if handshake.token != TOKEN:
        raise xraptor.Refuse(401, "unknown token")
    return {"user": "erin", "origin": handshake.origin}


@xraptor.XRaptor.register("/whoami").as_get
async def whoami(request: xraptor.Request) -> xraptor.Response:
    identity = request.connection.identity
    return xraptor.Response.create(request.request_id, {}, json.dumps(identity))


app.add_http_route("/", "text/html; charset=utf-8", b"<!doctype html><title>auth</title>")
"""

CONNECT = """async ([url, token]) => {
    const { XRaptorClient } = await import("/_xraptor/client.js");
    try {
        const client = await XRaptorClient.connect(url ?? undefined, { token });
        const reply = await client.get("/whoami");
        client.close();
        return { identity: JSON.parse(reply.payload), protocol: client._ws.protocol };
    } catch (error) {
        return { refused: error.code };
    }
}"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``xraptor run`` of the app at DEBUG level; yields its port and its log file."""
    (tmp_path / "authapp.py").write_text(APP.replace("TOKEN", repr(TOKEN)))
    port = free_port()
    log = tmp_path / "server.log"
    command = xraptor_command("--log-level", "debug", "run", "authapp:app", "--port", str(port))
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=dict(os.environ), stdout=output, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(port, process)
            yield port, log
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, log.read_text()


def test_the_browser_token_authenticates_and_stays_out_of_the_log(
    server: tuple[int, Path], browser: Any
) -> None:
    port, log = server
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{port}/")

    accepted = page.evaluate(CONNECT, [None, TOKEN])
    assert accepted == {
        "identity": {"user": "erin", "origin": f"http://127.0.0.1:{port}"},
        "protocol": "xraptor",
    }
    assert page.evaluate(CONNECT, [None, "wrong"]) == {"refused": "closed"}
    assert page.evaluate(CONNECT, [None, None]) == {"refused": "closed"}

    # another origin (localhost is not 127.0.0.1 to a browser): refused before the guard
    other = browser.new_page()
    other.goto(f"http://localhost:{port}/")
    assert other.evaluate(CONNECT, [f"ws://127.0.0.1:{port}/", TOKEN]) == {"refused": "closed"}
    assert errors == []

    text = log.read_text()
    assert "< Sec-WebSocket-Protocol: xraptor, xraptor.bearer.[redacted]" in text  # DEBUG on
    assert "HTTP response sent (401 Unauthorized)" in text  # refused before the upgrade
    assert f"Origin 'http://localhost:{port}'" in text and "--origin" in text
    encoded = base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=")
    for secret in (TOKEN, encoded, "s3cret"):
        assert secret not in text, secret
