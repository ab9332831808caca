"""xraptor through ASGI, end to end: a room spanning two uvicorn (and hypercorn)
workers over a private Redis, and the demo page in Chromium chatting through a
FastAPI mount with a Python client."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import chat_across_workers, free_port, join_chat, running

from xraptor import Client

APPS = Path(__file__).parents[1] / "asgi_apps"


def asgi_command(server: str, target: str, port: int, *options: str) -> list[str]:
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", target, "--bind", f"127.0.0.1:{port}", *options]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *options,
    ]


def in_thread(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on its own event loop in a thread (Playwright's sync API owns this one's)."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if failures:
        raise failures[0]


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_a_room_spans_two_asgi_workers_over_redis(server: str, redis_url: str) -> None:
    port = free_port()
    command = asgi_command(server, "mounted:asgi", port, "--workers", "2")
    env = {"XRAPTOR_TEST_ANTENNA": redis_url}
    with running(command, port, cwd=APPS, env=env) as parent:
        asyncio.run(chat_across_workers(f"ws://127.0.0.1:{port}/", None, workers=2))
        parent.send_signal(signal.SIGTERM)
        output = parent.communicate(timeout=40)[0].decode(errors="replace")
        assert "Traceback" not in output, output


@pytest.fixture
def fastapi_base() -> Iterator[str]:
    port = free_port()
    with running(asgi_command("uvicorn", "mounted:api", port), port, cwd=APPS):
        yield f"127.0.0.1:{port}"


def test_the_demo_page_chats_through_a_fastapi_mount(fastapi_base: str, browser: Any) -> None:
    from playwright.sync_api import expect

    errors: list[str] = []
    page = browser.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    join_chat(page, f"http://{fastapi_base}/realtime/", "fastapi-room", "browser")
    expect(page.locator("#status")).to_have_text(f"connected to ws://{fastapi_base}/realtime/")

    # Python -> browser
    async def post() -> None:
        async with Client(f"ws://{fastapi_base}/realtime/") as client:
            await client.post(
                "/send_message_to_chat_room",
                {"chat_id": "fastapi-room", "client_id": "python", "message": "hi browser"},
            )

    in_thread(post)
    expect(page.locator("#messages")).to_contain_text("hi browser")

    # browser -> Python (the Python side listens in a thread: Playwright's API is sync)
    received: list[Any] = []
    subscribed = threading.Event()

    def listen() -> None:
        async def main() -> None:
            async with (
                Client(f"ws://{fastapi_base}/realtime/") as client,
                client.subscribe("/chat_messages", {"chat_id": "fastapi-room"}) as stream,
            ):
                subscribed.set()
                push = await asyncio.wait_for(anext(stream), 10)
                received.append(json.loads(push.payload))

        asyncio.run(main())

    listener = threading.Thread(target=listen)
    listener.start()
    assert subscribed.wait(10)
    page.fill("#text", "hi python")
    page.click("#send-button")
    listener.join(15)
    assert received == [{"origin": "browser", "message": "hi python"}]
    assert errors == []


def test_a_browser_without_a_token_is_refused_by_the_guard(fastapi_base: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"http://{fastapi_base}/realtime/")
    outcome = page.evaluate(
        """async (base) => {
            const { XRaptorClient } = await import(base + "/realtime/_xraptor/client.js");
            const results = {};
            try {
                await XRaptorClient.connect("ws://" + location.host + "/secure/");
                results.without = "connected";
            } catch (error) { results.without = "refused"; }
            const client = await XRaptorClient.connect(
                "ws://" + location.host + "/secure/", { token: "let-me-in" });
            results.with = (await client.get("/whoami")).payload;
            client.close();
            return results;
        }""",
        f"http://{fastapi_base}",
    )
    assert outcome["without"] == "refused"
    assert json.loads(outcome["with"]) == {"user": "alice", "path": "/secure/"}
