"""Requests of one connection run concurrently; SUB/UNSUB keep their order; backpressure;
cancellation on disconnect; the SUB acknowledgment."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from typing import Any, ClassVar

import pytest

from core_support import ClientFactory, ServerFactory, error_code
from xraptor import AntennaUnavailable, Broadcast, Request, Response, XRaptor, error_response
from xraptor.antennas import MemoryAntenna

_started: list[str] = []
_cancelled: list[str] = []


def _routes() -> None:
    _started.clear()
    _cancelled.clear()

    @XRaptor.register("/slow").as_get
    async def slow(request: Request) -> Response:
        _started.append(request.request_id)
        try:
            await asyncio.sleep(float(request.payload or "1"))
        except asyncio.CancelledError:
            _cancelled.append(request.request_id)
            raise
        return Response.create(request.request_id, {}, "slow")

    @XRaptor.register("/fast").as_get
    async def fast(request: Request) -> Response:
        return Response.create(request.request_id, {}, "fast")

    @XRaptor.register("/room").as_sub
    async def join(request: Request) -> None:
        await asyncio.sleep(0.05)  # the SUB handler waits before it joins
        Broadcast.get(request.payload).add_member(request.request_id)

    @XRaptor.register("/room").as_post
    async def post(request: Request) -> Response:
        await XRaptor.get_antenna().post(json.loads(request.payload)["room"], "hello room")
        return Response.create(request.request_id, {}, "posted")


async def _answers(client: Any, count: int) -> dict[str, tuple[dict[str, Any], float]]:
    got: dict[str, tuple[dict[str, Any], float]] = {}
    while len(got) < count:
        message = await client.recv(5)
        got[message["request_id"]] = (message, time.monotonic())
    return got


async def test_a_slow_handler_does_not_delay_a_fast_answer(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server())
    start = time.monotonic()
    slow = await client.send("/slow", payload="1")
    fast = await client.send("/fast")
    first = await client.recv()
    # answers come out of order, matched by request_id
    assert first["request_id"] == fast and first["payload"] == "fast"
    assert time.monotonic() - start < 0.05
    second = await client.recv(3)
    assert second["request_id"] == slow and second["payload"] == "slow"


async def test_max_inflight_one_is_sequential(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server(max_inflight=1))
    start = time.monotonic()
    slow = await client.send("/slow", payload="0.3")
    fast = await client.send("/fast")
    assert (await client.recv())["request_id"] == slow
    assert (await client.recv())["request_id"] == fast
    assert time.monotonic() - start >= 0.3


async def test_past_max_inflight_the_server_stops_reading_until_one_finishes(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    server = await make_server(max_inflight=2)
    client = await make_client(server)
    start = time.monotonic()
    first = await client.send("/slow", payload="0.4")
    await client.send("/slow", payload="0.8")
    fast = await client.send("/fast")  # read only once a slot is free
    got = await _answers(client, 3)
    assert got[first][1] <= got[fast][1]  # the fast one waited for the first slow one
    assert got[fast][1] - start >= 0.35
    assert got[fast][0]["payload"] == "fast"
    # it is backpressure, not an error: nothing was refused
    assert all("error" not in message["header"] for message, _ in got.values())
    assert server.metrics.request_errors_total == 0


async def test_inflight_never_exceeds_max_inflight(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    server = await make_server(max_inflight=3)
    client = await make_client(server)
    for _ in range(10):
        await client.send("/slow", payload="0.2")
    await asyncio.sleep(0.1)
    assert len(_started) == 3
    connection = next(iter(server._connections))
    assert len(connection.tasks) == 3
    got = await _answers(client, 10)
    assert len(got) == 10 and len(_started) == 10


async def test_sub_then_post_on_one_connection_delivers_the_push(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server())
    sub = await client.send("/room", "SUB", "lobby")
    post = await client.send("/room", "POST", {"room": "lobby"})
    got = await _answers(client, 2)
    push = [m for m, _ in got.values() if m["request_id"] == sub]
    assert push and push[0]["payload"] == "hello room" and push[0]["method"] == "SUB"
    assert got[post][0]["payload"] == "posted"


async def test_sub_ack_comes_after_the_handler_and_the_room(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    server = await make_server()
    client = await make_client(server)
    other = await make_client(server)
    sub = await client.send("/room", "SUB", "r1", header={"ack": True})
    ack = await client.recv()
    assert ack == {
        "request_id": sub,
        "payload": '{"message": "subscribed"}',
        "header": {"ack": True},
        "method": "SUB",
    }
    # subscribed as soon as acknowledged: a post from another connection reaches it
    await other.request("/room", "POST", {"room": "r1"})
    assert (await client.recv())["payload"] == "hello room"


async def test_sub_without_ack_header_gets_what_04_sent(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server())
    await client.send("/room", "SUB", "r2")
    assert await client.nothing(0.3)


async def test_refused_sub_with_ack_gets_the_error_only(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server())
    await client.send("/nowhere", "SUB", header={"ack": True})
    assert error_code(await client.recv()) == "unknown_route"
    assert await client.nothing(0.2)


async def test_disconnect_cancels_in_flight_handlers_and_leaves_no_task(
    make_server: ServerFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _routes()
    server = await make_server()
    before = asyncio.all_tasks()
    client = await make_client(server)
    ids = [await client.send("/slow", payload="30") for _ in range(5)]
    await client.send("/fast")
    await client.recv()
    await asyncio.sleep(0.05)
    assert sorted(_started) == sorted(ids)
    with caplog.at_level(logging.DEBUG):
        await client.ws.close()
        for _ in range(100):
            if not server._connections and len(_cancelled) == 5:
                break
            await asyncio.sleep(0.02)
        gc.collect()
        await asyncio.sleep(0.05)
    assert sorted(_cancelled) == sorted(ids)
    assert not server._connections
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == [], leftover
    assert "Task was destroyed" not in caplog.text
    assert "exception was never retrieved" not in caplog.text


async def test_over_long_ids_are_refused(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server(max_id_length=64))
    await client.send("/fast", request_id="x" * 65)
    refused = await client.recv()
    assert error_code(refused) == "invalid_field" and refused["request_id"] == ""
    assert "request_id" in json.loads(refused["payload"])["message"]
    await client.send("/" + "r" * 64, request_id="ok-id")
    refused = await client.recv()
    assert error_code(refused) == "invalid_field" and refused["request_id"] == "ok-id"
    await client.send("/fast", request_id="y" * 900_000)  # refused, never a channel name
    assert error_code(await client.recv()) == "invalid_field"
    assert (await client.request("/fast"))["payload"] == "fast"


async def test_default_id_limit_is_256(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server())
    assert (await client.request("/fast", request_id="i" * 256))["payload"] == "fast"
    await client.send("/fast", request_id="i" * 257)
    assert error_code(await client.recv()) == "invalid_field"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64"])
async def test_limits_are_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        XRaptor("127.0.0.1", 0, max_inflight=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_id_length"):
        XRaptor("127.0.0.1", 0, max_id_length=bad)  # type: ignore[arg-type]


async def test_a_handler_keeps_its_own_task_while_it_waits(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    """asyncio.timeout() and current_task() inside a handler refer to that request only."""
    tasks: dict[str, asyncio.Task[object] | None] = {}

    @XRaptor.register("/bounded").as_get
    async def bounded(request: Request) -> Response:
        tasks[request.request_id + "-before"] = asyncio.current_task()
        try:
            async with asyncio.timeout(0.1):
                await asyncio.sleep(float(request.payload))
        except TimeoutError:
            outcome = "timed out"
        else:
            outcome = "in time"
        tasks[request.request_id + "-after"] = asyncio.current_task()
        return Response.create(request.request_id, {}, outcome)

    _routes()
    client = await make_client(await make_server())
    late = await client.send("/bounded", payload="5")
    quick = await client.send("/bounded", payload="0")
    fast = await client.send("/fast")
    got = await _answers(client, 3)
    assert got[late][0]["payload"] == "timed out"
    assert got[quick][0]["payload"] == "in time"
    assert got[fast][0]["payload"] == "fast"
    assert tasks[late + "-before"] is tasks[late + "-after"]
    assert tasks[late + "-before"] is not tasks[quick + "-before"]
    # the connection is still served after the timeout
    assert (await client.request("/fast"))["payload"] == "fast"


@pytest.mark.parametrize(
    ("case", "settings"),
    [
        ("reader waiting for room", {"max_inflight": 2}),
        ("one at a time", {"max_inflight": 1}),
        ("SUB handler that never returns", {}),
    ],
)
@pytest.mark.parametrize("ending", ["disconnect", "close"])
async def test_a_reader_that_cannot_read_still_ends_with_its_connection(
    make_server: ServerFactory,
    make_client: ClientFactory,
    case: str,
    settings: dict[str, Any],
    ending: str,
) -> None:
    hang = asyncio.Event()  # never set
    cancelled: list[str] = []

    @XRaptor.register("/hang").as_get
    async def hang_get(request: Request) -> None:
        try:
            await hang.wait()
        except asyncio.CancelledError:
            cancelled.append(request.request_id)
            raise

    @XRaptor.register("/hang").as_sub
    async def hang_sub(request: Request) -> None:
        await hang_get(request)

    server = await make_server(drain_timeout=0.2, close_timeout=0.2, **settings)
    client = await make_client(server)
    method = "SUB" if case.startswith("SUB") else "GET"
    sent = [await client.send("/hang", method) for _ in range(3 if method == "GET" else 1)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    if ending == "disconnect":
        await client.ws.close()
    else:
        await asyncio.wait_for(server.close(), 3)
    # every handler that had started is cancelled (past max_inflight, a GET is not read)
    started_handlers = min(len(sent), settings.get("max_inflight", 64))
    for _ in range(100):
        if not server._connections and len(cancelled) == started_handlers:
            break
        await asyncio.sleep(0.02)
    assert not server._connections, case
    assert len(cancelled) == started_handlers, case
    assert time.monotonic() - started < 1.5


class SlowWatchAntenna(MemoryAntenna):
    """A memory antenna whose subscriptions take 0.2 s, and fail for ``broken-`` rooms."""

    name: ClassVar[str] = "slow-watch"

    async def watch(self, channel: str) -> None:
        await asyncio.sleep(0.2)
        if channel.startswith("broken-"):
            raise AntennaUnavailable(f"cannot subscribe {channel}")
        await super().watch(channel)


async def test_the_ack_waits_for_a_slow_room_subscription(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    server = await make_server(antenna=SlowWatchAntenna())
    client, other = await make_client(server), await make_client(server)
    await client.send("/room", "SUB", "slow-room", header={"ack": True})
    assert (await client.recv())["header"] == {"ack": True}
    await other.request("/room", "POST", {"room": "slow-room"})
    assert (await client.recv())["payload"] == "hello room"


async def test_a_sub_whose_room_cannot_subscribe_is_refused(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    server = await make_server(antenna=SlowWatchAntenna())
    client = await make_client(server)
    await client.send("/room", "SUB", "broken-room", header={"ack": True})
    assert error_code(await client.recv()) == "backend_unavailable"
    assert await client.nothing(0.3)  # no acknowledgment
    assert server.streams == {}


async def test_a_sub_handler_answering_an_error_holds_no_stream(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    @XRaptor.register("/forbidden").as_sub
    async def forbidden(request: Request) -> Response:
        return error_response("forbidden", "not for you", request)

    @XRaptor.register("/odd").as_sub
    async def odd(request: Request) -> str:
        return "not a response"

    server = await make_server(max_streams=3)
    client = await make_client(server)
    for _ in range(4):
        await client.send("/forbidden", "SUB", header={"ack": True})
        assert error_code(await client.recv()) == "forbidden"
    await client.send("/odd", "SUB", header={"ack": True})
    assert error_code(await client.recv()) == "invalid_response"
    assert await client.nothing(0.2)
    assert server.streams == {} and server.metrics.streams_active == 0
