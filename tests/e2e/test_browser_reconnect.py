"""The browser client's ``{reconnect: true}`` in headless Chromium (issue 12 part 4).

The servers, the publisher and the TCP proxy run on an asyncio loop in a thread
of the test process (:class:`Backstage`), while Playwright's sync API drives the
page; the page is loaded through the proxy, so its WebSocket goes through it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from reconnect_support import (
    BACKENDS,
    PROXY_DROP_AT,
    ROOM,
    SERVER_ABORT_AT,
    SMALL_HISTORY,
    SMALL_ROOM,
    TOTAL,
    ChatApp,
    chat_app,
    expected,
    publish_steadily,
    started,
)
from tcp_proxy import TcpProxy

from xraptor import Client

T = TypeVar("T")

PAGE = b"""<!doctype html>
<title>reconnect</title>
<ol id="messages"></ol>
<script type="module">
import { XRaptorClient } from "/_xraptor/client.js";
window.notices = [];
window.tokens = 0;
const token = async () => `token-${(window.tokens += 1)}`;
const client = await XRaptorClient.connect(undefined, {
  token, timeout: 3000, reconnect: { initialDelay: 20, maxDelay: 100 },
});
const list = document.getElementById("messages");
window.sub = client.subscribe("/room", { room: ROOM }, {}, (push) => {
  if (push.header.notice) {
    window.notices.push(push.header);
    return;
  }
  window.lastPosition = push.header.position;
  const item = document.createElement("li");
  item.textContent = push.payload;
  list.append(item);
});
await window.sub.ready;
window.client = client;
document.body.dataset.ready = "yes";
</script>
"""


class Backstage:
    """An asyncio loop in a thread: the servers, the publisher and the proxy live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self, coroutine: Coroutine[Any, Any, T]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Stage:
    """What a test gets: the app behind the proxy, a second app, a publisher."""

    def __init__(self, backstage: Backstage, chat: ChatApp, publisher: Client, proxy: TcpProxy):
        self.backstage = backstage
        self.chat = chat
        self.publisher = publisher
        self.proxy = proxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}/"

    def call(self, function: Any) -> Any:
        """Run a plain function on the loop's thread (the proxy and apps are not thread-safe)."""

        async def call() -> Any:
            return function()

        return self.backstage.run(call())


@pytest.fixture(params=["memory", "redis", "nats"])
def antenna(request: pytest.FixtureRequest) -> str:
    """Every room keeps history: on the memory antenna, and over private Redis and NATS
    (JetStream) servers (tests/e2e/conftest.py)."""
    return BACKENDS[request.param](request)


@pytest.fixture
def stage(antenna: str) -> Iterator[Stage]:
    backstage = Backstage()
    ready: asyncio.Future[Stage] = asyncio.Future(loop=backstage.loop)
    done = threading.Event()

    async def hold() -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                chat = chat_app(antenna)
                chat.app.add_http_route(
                    "/", "text/html; charset=utf-8", PAGE.replace(b"ROOM", repr(ROOM).encode())
                )
                chat.check_tokens = True
                await stack.enter_async_context(started(chat))
                publisher_app = await stack.enter_async_context(started(chat_app(antenna)))
                publisher = await stack.enter_async_context(Client(publisher_app.url))
                proxy = await stack.enter_async_context(TcpProxy(("127.0.0.1", chat.app.port)))
            except BaseException as error:  # the test gets it, not a timeout
                ready.set_exception(error)
                return
            ready.set_result(Stage(backstage, chat, publisher, proxy))
            while not done.is_set():
                await asyncio.sleep(0.05)

    holding = backstage.start(hold())
    try:
        yield backstage.run(_wait(ready))
    finally:
        done.set()
        holding.result(30)
        backstage.stop()


async def _wait(future: asyncio.Future[T]) -> T:
    return await future


def open_page(browser: Any, stage: Stage) -> Any:
    from playwright.sync_api import expect

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(stage.url)
    expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    page.errors = errors
    return page


def test_the_page_shows_every_message_once_in_order_across_two_cuts(
    browser: Any, stage: Stage
) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, stage)

    def abort() -> None:
        assert stage.chat.abort_subscribers() == 1

    def drop() -> None:
        assert stage.proxy.drop() >= 1  # the page's HTTP connections too, if kept alive

    posting = stage.backstage.start(
        publish_steadily(stage.publisher, {SERVER_ABORT_AT: abort, PROXY_DROP_AT: drop})
    )
    posting.result(30)
    items = page.locator("#messages li")
    expect(items).to_have_count(TOTAL, timeout=15_000)
    assert items.all_text_contents() == expected()
    assert page.evaluate("window.client.reconnects") == 2
    assert page.evaluate("window.notices") == []
    # the token function was asked again on each reconnection: the guard saw three tokens
    assert stage.call(lambda: list(stage.chat.tokens)) == ["token-1", "token-2", "token-3"]
    # subscribed again twice, each time with a new id and since its last position
    subs = stage.call(lambda: list(stage.chat.subs))
    assert len(subs) == 3 and len({request_id for request_id, _ in subs}) == 3
    assert subs[0][1] is None
    assert all(set(since) == {ROOM} for _, since in subs[1:])
    assert page.evaluate("window.sub.request_id") == subs[2][0]
    positions = page.evaluate("window.sub.positions")
    assert positions == {ROOM: page.evaluate("window.lastPosition")}
    assert page.errors == []


def test_in_flight_requests_fail_and_close_stops_reconnecting(browser: Any, stage: Stage) -> None:
    page = open_page(browser, stage)
    # a request in flight when the connection drops: rejected with connection_lost
    page.evaluate(
        "() => { window.slow = window.client.get('/slow').then(() => 'resolved', (e) => e.code); }"
    )
    _wait_until(lambda: stage.call(lambda: len(stage.chat.slow_calls)) == 1)
    stage.call(stage.proxy.drop)
    assert page.evaluate("window.slow") == "connection_lost"
    page.wait_for_function("window.client.reconnects === 1")
    assert page.evaluate("window.client.get('/_xraptor/ping').then((r) => r.payload)") == "pong"
    assert stage.call(lambda: len(stage.chat.slow_calls)) == 1  # not sent again

    # the server unreachable: a request waits for the reconnection, close() ends both
    def refuse() -> None:
        stage.proxy.refuse = True
        stage.proxy.drop()

    stage.call(refuse)
    page.wait_for_function("window.client.state === 'reconnecting'")
    page.evaluate(
        "() => { window.waiting = window.client.get('/_xraptor/ping').then(() => 'resolved', (e) => e.code); }"
    )
    _wait_until(lambda: stage.call(lambda: stage.proxy.accepted) >= 6)  # it keeps trying
    page.evaluate("window.client.close()")
    assert page.evaluate("window.client.state") == "closed"
    assert page.evaluate("window.waiting") == "closed"
    page.wait_for_timeout(100)  # an attempt cancelled mid-handshake may still be accepted
    attempts = stage.call(lambda: stage.proxy.accepted)
    stage.call(lambda: setattr(stage.proxy, "refuse", False))
    page.wait_for_timeout(500)
    assert stage.call(lambda: stage.proxy.accepted) == attempts
    assert page.errors == []


def _wait_until(condition: Any, timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


UNRECOVERED = """() => {
  window.small = [];
  const sub = window.client.subscribe("/room", { room: SMALL_ROOM }, {}, (push) => {
    window.small.push(push.header.notice ? push.header : push.payload);
  });
  return sub.ready.then(() => true);
}"""


def test_what_history_no_longer_holds_reaches_the_callback_as_a_notice(
    browser: Any, stage: Stage
) -> None:
    page = open_page(browser, stage)
    assert page.evaluate(UNRECOVERED.replace("SMALL_ROOM", repr(SMALL_ROOM))) is True

    def say(text: str) -> None:
        stage.backstage.run(stage.publisher.post("/say", {"room": SMALL_ROOM, "text": text}))

    say("seen")
    page.wait_for_function("window.small.length === 1")

    def refuse(refusing: bool) -> None:
        stage.proxy.refuse = refusing
        if refusing:
            stage.proxy.drop()

    stage.call(lambda: refuse(True))
    page.wait_for_function("window.client.state === 'reconnecting'")
    for n in range(SMALL_HISTORY + 2):  # "seen" falls out of the room's history
        say(f"missed{n}")
    stage.call(lambda: refuse(False))
    page.wait_for_function("window.client.reconnects === 1")
    say("live")
    page.wait_for_function("window.small.length === 3")
    assert page.evaluate("window.small") == [
        "seen",
        {"notice": "unrecovered", "room": SMALL_ROOM},
        "live",
    ]
    assert page.errors == []
