"""The reconnecting Python client (issue 12 part 4), against real servers through a TCP
proxy that the tests cut."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from reconnect_support import (
    BACKENDS,
    FAST,
    ROOM,
    SMALL_HISTORY,
    SMALL_ROOM,
    ChatApp,
    chat_app,
    every_message_once_across_two_cuts,
    started,
)
from tcp_proxy import TcpProxy

from xraptor import Client, ClientError, ConnectionLost, Reconnect, Response
from xraptor.client import Stream


@pytest.fixture(params=["memory"])  # Redis and NATS: tests/e2e/test_reconnect_backends.py
def antenna(request: pytest.FixtureRequest) -> str:
    """The ``antenna`` argument of every app of a test (see reconnect_support.BACKENDS)."""
    return BACKENDS[request.param](request)


@pytest_asyncio.fixture
async def chat(antenna: str) -> AsyncIterator[ChatApp]:
    async with started(chat_app(antenna)) as app:
        yield app


@pytest_asyncio.fixture
async def proxy(chat: ChatApp) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(("127.0.0.1", chat.app.port)) as tcp:
        yield tcp


def through(proxy: TcpProxy, **options: Any) -> Client:
    return Client(
        f"ws://127.0.0.1:{proxy.port}", reconnect=options.pop("reconnect", FAST), **options
    )


async def take(stream: Stream, count: int, timeout: float = 5) -> list[Response]:
    return [await asyncio.wait_for(anext(stream), timeout) for _ in range(count)]


async def eventually(condition: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# ----- the acceptance scenario ---------------------------------------------------------


@pytest.mark.parametrize("second_server", [False, True], ids=["same-server", "second-server"])
async def test_every_message_once_in_order_across_two_cuts(
    antenna: str, chat: ChatApp, proxy: TcpProxy, second_server: bool
) -> None:
    """1,000 messages at a steady rate; the server aborts the subscriber's connection,
    later the proxy drops it (and, with ``second_server``, sends the reconnection to
    another server on the same backend): the subscriber sees each message once, in order."""
    async with (
        started(chat_app(antenna)) as publisher_app,
        started(chat_app(antenna)) as second,
    ):
        await every_message_once_across_two_cuts(
            chat, proxy, publisher_app.url, reconnect_to=second.app.port if second_server else None
        )
        assert (len(second.subscribers) == 1) == second_server


# ----- what a reconnection re-opens --------------------------------------------------------


async def test_streams_reopen_with_new_ids_and_the_positions_received(
    chat: ChatApp, proxy: TcpProxy
) -> None:
    async with (
        Client(chat.url) as poster,
        through(proxy) as subscriber,
        subscriber.subscribe("/room", {"room": ROOM}) as stream,
    ):
        first_id = stream.request_id
        for n in range(3):
            await poster.post("/say", {"room": ROOM, "text": f"a{n}"})
        # two iterated, one still queued: since is the last position *received*
        iterated = await take(stream, 2)
        await eventually(lambda: stream._queue)
        queued_position = stream._queue[-1].header["position"]
        assert stream.positions == {ROOM: iterated[-1].header["position"]}
        proxy.drop()
        await eventually(lambda: subscriber.reconnects == 1)
        await poster.post("/say", {"room": ROOM, "text": "b0"})
        rest = await take(stream, 2)
    assert [push.payload for push in iterated + rest] == ["a0", "a1", "a2", "b0"]
    assert chat.subs == [(first_id, None), (stream.request_id, {ROOM: queued_position})]
    assert stream.request_id != first_id


async def test_what_history_no_longer_holds_is_an_unrecovered_notice(
    chat: ChatApp, proxy: TcpProxy
) -> None:
    async with (
        Client(chat.url) as poster,
        through(proxy) as subscriber,
        subscriber.subscribe("/room", {"room": SMALL_ROOM}) as stream,
    ):
        await poster.post("/say", {"room": SMALL_ROOM, "text": "seen"})
        await take(stream, 1)
        proxy.refuse = True
        proxy.drop()
        await eventually(lambda: subscriber.state == "reconnecting")
        for n in range(SMALL_HISTORY + 2):  # "seen" falls out of the history
            await poster.post("/say", {"room": SMALL_ROOM, "text": f"missed{n}"})
        proxy.refuse = False
        await eventually(lambda: subscriber.reconnects == 1)
        # the notice comes once the SUB sent again is served (its room subscribed): a
        # post made before that is in the history the notice says is gone, not live
        (notice,) = await take(stream, 1)
        await poster.post("/say", {"room": SMALL_ROOM, "text": "live"})
        (live,) = await take(stream, 1)
    assert notice.header == {"notice": "unrecovered", "room": SMALL_ROOM}
    assert json.loads(notice.payload)["code"] == "unrecovered"
    assert live.payload == "live"


async def test_a_stream_with_no_position_gets_a_gap_notice(chat: ChatApp, proxy: TcpProxy) -> None:
    """A room without history: nothing to resume from, so the stream is told."""
    async with (
        Client(chat.url) as poster,
        through(proxy) as subscriber,
        subscriber.subscribe("/room", {"room": "plain"}) as stream,
    ):
        await poster.post("/say", {"room": "plain", "text": "before"})
        (before,) = await take(stream, 1)
        assert "position" not in before.header
        proxy.drop()
        await eventually(lambda: subscriber.reconnects == 1)
        await poster.post("/say", {"room": "plain", "text": "after"})
        gap, after = await take(stream, 2)
    assert gap.header == {"notice": "gap"}
    assert json.loads(gap.payload)["code"] == "gap"
    assert after.payload == "after"


async def test_a_refused_reopening_ends_that_stream(chat: ChatApp, proxy: TcpProxy) -> None:
    async with (
        through(proxy) as subscriber,
        subscriber.subscribe("/picky") as picky_stream,
        subscriber.subscribe("/room", {"room": ROOM}) as room_stream,
        Client(chat.url) as poster,
    ):
        chat.refusing = True
        proxy.drop()
        await eventually(lambda: subscriber.reconnects == 1)
        (gap,) = await take(picky_stream, 1)  # no position: told of the gap, then refused
        assert gap.header == {"notice": "gap"}
        with pytest.raises(ClientError, match="forbidden: not any more"):
            await take(picky_stream, 1)
        await poster.post("/say", {"room": ROOM, "text": "still here"})
        gap, push = await take(room_stream, 2)  # nothing received yet: no position either
        assert (gap.header, push.payload) == ({"notice": "gap"}, "still here")


# ----- requests across a drop ------------------------------------------------------------


async def test_a_request_in_flight_fails_with_connection_lost_and_is_not_retried(
    chat: ChatApp, proxy: TcpProxy
) -> None:
    calls = chat.slow_calls
    async with through(proxy) as client:
        pending = asyncio.create_task(client.get("/slow"))
        await eventually(lambda: calls)
        proxy.drop()
        with pytest.raises(ConnectionLost, match="dropped before the reply") as lost:
            await asyncio.wait_for(pending, 0.5)  # at once, not after the timeout
        assert isinstance(lost.value.__cause__, Exception)
        await eventually(lambda: client.reconnects == 1)
        assert (await client.get("/_xraptor/ping")).payload == "pong"
        await asyncio.sleep(1.2)
    assert len(calls) == 1  # nothing was sent again


async def test_a_subscribe_in_flight_fails_with_connection_lost(
    chat: ChatApp, proxy: TcpProxy
) -> None:
    async with through(proxy) as client:
        entering = asyncio.create_task(
            client.subscribe("/room", {"room": ROOM, "linger": 1}).__aenter__()
        )
        await eventually(lambda: chat.subs)
        proxy.drop()
        with pytest.raises(ConnectionLost, match="before the SUB's acknowledgment"):
            await asyncio.wait_for(entering, 0.5)
        await eventually(lambda: client.reconnects == 1)
        assert client._streams == {}  # not re-opened: the application was told it failed
        assert len(chat.subs) == 1


async def test_requests_while_reconnecting_wait_for_the_connection(
    chat: ChatApp, proxy: TcpProxy
) -> None:
    async with through(proxy, timeout=2) as client:
        proxy.refuse = True
        proxy.drop()
        await eventually(lambda: client.state == "reconnecting")
        waiting = asyncio.create_task(client.get("/_xraptor/ping"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        proxy.refuse = False
        assert (await asyncio.wait_for(waiting, 3)).payload == "pong"
        assert client.reconnects == 1
        # not reconnected within the request's timeout: TimeoutError, nothing was sent
        proxy.refuse = True
        proxy.drop()
        await eventually(lambda: client.state == "reconnecting")
        with pytest.raises(TimeoutError, match="not reconnected"):
            await client.request("GET", "/_xraptor/ping", timeout=0.2)


# ----- authentication again --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_the_token_function_is_asked_again_on_every_reconnect(
    chat: ChatApp, proxy: TcpProxy, kind: str
) -> None:
    chat.check_tokens = True
    seen = chat.tokens
    issued = 0

    def fresh() -> str:
        nonlocal issued
        issued += 1
        return f"token-{issued}"

    async def fresh_async() -> str:
        await asyncio.sleep(0)
        return fresh()

    token = fresh if kind == "sync" else fresh_async
    async with through(proxy, token=token) as client:
        for count in (1, 2):
            proxy.drop()
            await eventually(lambda: client.reconnects == count)  # noqa: B023
        assert (await client.get("/_xraptor/ping")).payload == "pong"
    assert seen == ["token-1", "token-2", "token-3"]


async def test_a_refused_handshake_stops_reconnecting(chat: ChatApp, proxy: TcpProxy) -> None:
    async with through(proxy) as client, client.subscribe("/room", {"room": ROOM}) as stream:
        chat.banned = True
        proxy.drop()
        with pytest.raises(ConnectionLost, match=r"gave up reconnecting .* 1 attempt.*403"):
            await asyncio.wait_for(anext(stream), 5)
        assert client.state == "closed"
        assert proxy.accepted == 2
        with pytest.raises(ConnectionLost, match="gave up"):
            await client.get("/_xraptor/ping")


async def test_failed_attempts_that_may_succeed_later_are_retried(
    chat: ChatApp, proxy: TcpProxy
) -> None:
    """503 (a server draining for a deploy), 429, 408, and a token function that raised
    are failed attempts, not the end."""
    calls = 0

    def flaky_token() -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("the token service is down")
        return f"token-{calls}"

    async with through(proxy, token=flaky_token) as client:
        chat.refuse_next = [503, 429, 408]
        proxy.drop()
        await eventually(lambda: client.reconnects == 1)
        assert chat.refuse_next == []
        assert calls == 6  # the first connect, a failure, three refusals, the reconnection
        assert proxy.accepted == 1 + 4
        assert (await client.get("/_xraptor/ping")).payload == "pong"


async def test_max_attempts_then_gives_up(chat: ChatApp, proxy: TcpProxy) -> None:
    policy = Reconnect(initial_delay=0.01, max_delay=0.02, max_attempts=3)
    async with (
        through(proxy, reconnect=policy) as client,
        client.subscribe("/room", {"room": ROOM}) as stream,
    ):
        proxy.refuse = True
        proxy.drop()
        with pytest.raises(ConnectionLost, match="after 3 attempt"):
            await asyncio.wait_for(anext(stream), 5)
    assert proxy.accepted == 1 + 3
    assert client.state == "closed"


# ----- close ---------------------------------------------------------------------------------


async def test_close_during_the_backoff_stops_reconnecting(chat: ChatApp, proxy: TcpProxy) -> None:
    before = asyncio.all_tasks()
    client = through(proxy, reconnect=Reconnect(initial_delay=0.2, max_delay=0.2))
    await client.connect()
    stream = client.subscribe("/room", {"room": ROOM})
    await stream.__aenter__()
    proxy.refuse = True
    proxy.drop()
    await eventually(lambda: proxy.accepted >= 3)  # it keeps trying, 0-0.2 s apart
    waiting = asyncio.create_task(client.get("/_xraptor/ping"))
    await asyncio.sleep(0.05)
    await client.close()
    await asyncio.sleep(0.1)  # an attempt cancelled mid-handshake may still be accepted
    attempts = proxy.accepted
    assert client.state == "closed"
    assert [push async for push in stream] == []  # the iteration ends, no error
    with pytest.raises(ConnectionLost, match="closed while it was reconnecting"):
        await waiting
    proxy.refuse = False
    await asyncio.sleep(0.6)
    assert proxy.accepted == attempts
    leftover = [
        getattr(task.get_coro(), "__qualname__", "")
        for task in asyncio.all_tasks() - before
        if not task.done()
    ]
    assert [name for name in leftover if name.startswith(("Client.", "Reconnector."))] == []


# ----- the policy -----------------------------------------------------------------------------


def test_the_backoff_is_exponential_with_full_jitter() -> None:
    policy = Reconnect(initial_delay=0.1, max_delay=1.0)
    for attempt, bound in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > bound * 0.8 and min(delays) < bound * 0.2  # spread over the range
    assert 0 <= policy.delay(10_000) <= 1.0
    assert not policy.gives_up(10**6)
    assert Reconnect(max_attempts=2).gives_up(2) and not Reconnect(max_attempts=2).gives_up(1)


def test_bad_reconnect_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="initial_delay must be positive"):
        Reconnect(initial_delay=0)
    with pytest.raises(ValueError, match="max_delay must be at least"):
        Reconnect(initial_delay=2, max_delay=1)
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        Reconnect(max_attempts=0)
    with pytest.raises(ValueError, match="max_attempts must be an int"):
        Reconnect(max_attempts=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"reconnect must be a bool or an xraptor\.Reconnect"):
        Client("ws://x", reconnect="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="token must be a str or a function"):
        Client("ws://x", token=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either as token= or as an Authorization header"):
        Client("ws://x", token=lambda: "t", headers={"Authorization": "Basic x"})


async def test_a_token_function_returning_a_bad_token_fails_connect(chat: ChatApp) -> None:
    with pytest.raises(TypeError, match="token must be a str"):
        await Client(chat.url, token=lambda: 42).connect()  # type: ignore[arg-type]
