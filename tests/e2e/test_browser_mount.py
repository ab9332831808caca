"""The browser client's default URL follows where the module was loaded from (a mount path).

A real ``xraptor run`` process serves the chat page and the client at the root and
again under ``/realtime/``, as a server mounted at a path would; WebSocket upgrades
on any path reach it, and a connect guard records which path each one used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import free_port, join_chat, running, xraptor_command

APP = """
import xraptor
from xraptor import static


@xraptor.XRaptor.register("/where").as_get
async def where(request: xraptor.Request) -> xraptor.Response:
    return xraptor.Response.create(request.request_id, {}, request.connection.identity)


from xraptor.demo import make_server

app = make_server("127.0.0.1", 0)


@app.on_connect
async def record_path(handshake: xraptor.Handshake) -> object:
    return handshake.path  # the WebSocket's path, answered by /where


page = static.read("chat.html")
client = static.read("xraptor.js")
app.add_http_route("/realtime/", "text/html; charset=utf-8", page)
app.add_http_route("/realtime/_xraptor/client.js", "text/javascript", client)
app.add_http_route("/assets/xraptor-copy.js", "text/javascript", client)
app.add_http_route("/plain", "text/html; charset=utf-8", b"<!doctype html><title>plain</title>")
"""

WHERE = """async (module) => {
    const { XRaptorClient } = await import(module);
    const client = await XRaptorClient.connect();
    const reply = await client.get("/where");
    client.close();
    return { url: client.url, path: reply.payload };
}"""


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "mountapp.py").write_text(APP)
    port = free_port()
    command = xraptor_command("run", "mountapp:app", "--port", str(port))
    with running(command, port, cwd=tmp_path):
        yield f"http://127.0.0.1:{port}"


def test_the_demo_page_chats_under_a_mount_path(base: str, browser: Any) -> None:
    from playwright.sync_api import expect

    errors: list[str] = []
    mounted, root = browser.new_page(), browser.new_page()
    for page in (mounted, root):
        page.on("pageerror", lambda error: errors.append(str(error)))
    join_chat(mounted, f"{base}/realtime/", "mount-room", "mounted")
    join_chat(root, f"{base}/", "mount-room", "at-root")
    ws = base.replace("http://", "ws://")
    expect(mounted.locator("#status")).to_have_text(f"connected to {ws}/realtime/")
    expect(root.locator("#status")).to_have_text(f"connected to {ws}/")

    mounted.fill("#text", "hello from under /realtime")
    mounted.click("#send-button")
    expect(root.locator("#messages")).to_contain_text("hello from under /realtime")
    assert errors == []


@pytest.mark.parametrize(
    ("page_path", "module", "socket_path"),
    [
        ("/realtime/", "/realtime/_xraptor/client.js", "/realtime/"),
        ("/plain", "/realtime/_xraptor/client.js", "/realtime/"),  # the module decides
        ("/plain", "/_xraptor/client.js", "/"),  # the demo at the root, as before
        ("/realtime/", "/assets/xraptor-copy.js", "/"),  # another path: the page's host
    ],
)
def test_default_url_comes_from_the_module(
    base: str, browser: Any, page_path: str, module: str, socket_path: str
) -> None:
    page = browser.new_page()
    page.goto(f"{base}{page_path}")
    result = page.evaluate(WHERE, module)
    assert result == {"url": base.replace("http://", "ws://") + socket_path, "path": socket_path}
