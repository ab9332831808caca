"""The demo's chat page in headless Chromium: two pages in one room see each other."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import ARTIFACTS, free_port, join_chat, running, xraptor_command


@pytest.fixture
def demo() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with running(xraptor_command("demo", "--port", str(port)), port) as process:
        yield f"http://127.0.0.1:{port}/", process
    assert process.returncode == 0  # SIGTERM drains and exits cleanly


def test_two_pages_chat_in_one_room(
    demo: tuple[str, subprocess.Popen[bytes]], browser: Any
) -> None:
    from playwright.sync_api import expect

    url, _ = demo
    errors: list[str] = []
    alice = browser.new_page(viewport={"width": 900, "height": 640})
    bob = browser.new_page(viewport={"width": 900, "height": 640})
    for page in (alice, bob):
        page.on("pageerror", lambda error: errors.append(str(error)))
    join_chat(alice, url, "e2e-room", "alice")
    join_chat(bob, url, "e2e-room", "bob")
    # a third page in another room must not see the message
    carol = browser.new_page()
    join_chat(carol, url, "elsewhere", "carol")

    alice.fill("#text", "hello from alice <b>not bold</b>")
    alice.click("#send-button")
    expect(bob.locator("#messages li", has_text="hello from alice")).to_have_count(1)
    expect(bob.locator("#messages")).to_contain_text("alicehello from alice <b>not bold</b>")
    expect(alice.locator("#messages li.mine")).to_contain_text("hello from alice")
    assert bob.locator("#messages b").count() == 0  # text, not markup

    bob.fill("#text", "hi alice")
    bob.press("#text", "Enter")
    expect(alice.locator("#messages")).to_contain_text("bobhi alice")

    # leave: alice no longer receives the room
    alice.click("#join-button")
    expect(alice.locator("body")).to_have_attribute("data-joined", "no")
    bob.fill("#text", "are you there?")
    bob.click("#send-button")
    expect(bob.locator("#messages")).to_contain_text("are you there?")
    assert "are you there?" not in alice.locator("#messages").inner_text()
    assert "hello from alice" not in carol.locator("#messages").inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    bob.screenshot(path=str(ARTIFACTS / "chat-bob.png"))
    alice.screenshot(path=str(ARTIFACTS / "chat-alice.png"))
    assert errors == []


def test_browser_client_module_shape(
    demo: tuple[str, subprocess.Popen[bytes]], browser: Any
) -> None:
    """get/post/subscribe of /_xraptor/client.js, and error codes on rejection."""
    url, _ = demo
    page = browser.new_page()
    page.goto(url)
    result = page.evaluate(
        """async () => {
        const { XRaptorClient, XRaptorError } = await import("/_xraptor/client.js");
        const client = await XRaptorClient.connect();
        const out = {};
        try { await client.get("/nowhere", "", {}); } catch (e) {
            out.code = e.code; out.isError = e instanceof Error && e instanceof XRaptorError;
        }
        const pushes = [];
        const refused = [];
        const nowhere = client.subscribe("/nowhere", "", {}, () => {}, (e) => refused.push(e.code));
        try { await nowhere.ready; out.ready = "resolved"; } catch (e) { out.notReady = e.code; }
        const sub = client.subscribe("/chat_messages", {chat_id: "shape"}, {},
                                     (m) => pushes.push(m));
        out.acked = (await sub.ready) === undefined;
        const early = client.subscribe("/chat_messages", {chat_id: "early"});
        early.unsubscribe();  // before the acknowledgment: ready rejects, never hangs
        try { await early.ready; } catch (e) { out.early = e.code; }
        const reply = await client.post("/send_message_to_chat_room",
            {chat_id: "shape", client_id: "me", message: "x"}, {trace: "1"});
        out.reply = reply;
        for (let i = 0; i < 50 && pushes.length === 0; i++) {
            await new Promise((r) => setTimeout(r, 20));
        }
        out.push = pushes[0];
        out.refused = refused;
        sub.unsubscribe();
        const closed = new Promise((resolve) => { client.onclose = resolve; });
        client.close();
        await closed;
        try { await client.get("/x"); } catch (e) { out.afterClose = e.code; }
        return out;
    }"""
    )
    assert result["code"] == "unknown_route" and result["isError"] is True
    assert result["refused"] == ["unknown_route"]
    assert result["notReady"] == "unknown_route" and "ready" not in result
    assert result["acked"] is True  # the acknowledgment is not passed on as a push
    assert result["early"] == "closed"
    assert result["reply"]["payload"] == '{"message": "Message sent"}'
    assert result["reply"]["method"] == "POST"
    assert set(result["reply"]) == {"request_id", "payload", "header", "method"}
    assert result["push"]["method"] == "SUB"
    assert result["push"]["payload"] == '{"origin":"me","message":"x"}'
    assert result["afterClose"] == "closed"


def test_the_page_reconnects_to_a_restarted_server_and_rejoins_its_room(
    browser: Any,
) -> None:
    """The demo page connects with ``{reconnect: true}``: after the server restarts on
    the same port, it reconnects, joins its room again, says that messages may have
    been missed (the demo's rooms keep no history), and receives the room again."""
    from playwright.sync_api import expect

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    alice = browser.new_page()
    with running(xraptor_command("demo", "--port", str(port)), port):
        join_chat(alice, url, "again", "alice")
    # the server drained and stopped; a new one takes the port
    with running(xraptor_command("demo", "--port", str(port)), port):
        expect(alice.locator("#status")).to_contain_text("reconnected", timeout=15000)
        expect(alice.locator("#messages")).to_contain_text("may have been missed")
        assert alice.locator("body").get_attribute("data-joined") == "yes"
        bob = browser.new_page()
        join_chat(bob, url, "again", "bob")
        bob.fill("#text", "welcome back")
        bob.click("#send-button")
        expect(alice.locator("#messages")).to_contain_text("bobwelcome back")
