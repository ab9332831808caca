"""xraptor.Client against an in-process server."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from core_support import ServerFactory
from xraptor import Client, ClientError, MethodType, Request, Response, XRaptor


def _routes() -> None:
    async def echo(request: Request) -> Response:
        body = json.dumps({"payload": request.payload, "header": request.header})
        return Response.create(request.request_id, {"seen": request.method.value}, body)

    route = XRaptor.register("/echo")
    route.as_get(echo)
    route.as_post(echo)
    route.as_put(echo)

    @XRaptor.register("/slow").as_get
    async def slow(request: Request) -> Response:
        await asyncio.sleep(2)
        return Response.create(request.request_id, {}, "late")

    @XRaptor.register("/ticks").as_sub
    async def ticks(request: Request) -> None:
        count = int(json.loads(request.payload)["count"])
        for n in range(count):
            await XRaptor.get_antenna().post(request.request_id, f"tick {n}")

    @XRaptor.register("/quiet").as_sub
    async def quiet(request: Request) -> None:
        return None

    @XRaptor.register("/push").as_post
    async def push(request: Request) -> Response:
        data = json.loads(request.payload)
        await XRaptor.get_antenna().post(data["to"], data["message"])
        return Response.create(request.request_id, {}, "ok")


def _url(server: XRaptor) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def test_get_post_put_with_headers(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server)) as client:
        for method, call in (("GET", client.get), ("POST", client.post), ("PUT", client.put)):
            reply = await call("/echo", "plain text", {"token": "t-1"})
            assert reply.method is MethodType[method]
            assert reply.header == {"seen": method}
            assert json.loads(reply.payload) == {
                "payload": "plain text",
                "header": {"token": "t-1"},
            }
            assert len(reply.request_id) == 32
        reply = await client.post("/echo", {"a": [1, "é"]})
        assert json.loads(json.loads(reply.payload)["payload"]) == {"a": [1, "é"]}
        reply = await client.put("/echo", [1, 2])
        assert json.loads(json.loads(reply.payload)["payload"]) == [1, 2]


async def test_concurrent_requests_are_matched_by_request_id(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server)) as client:
        replies = await asyncio.gather(*(client.get("/echo", str(n)) for n in range(50)))
        assert [json.loads(r.payload)["payload"] for r in replies] == [str(n) for n in range(50)]


async def test_unknown_route_raises_client_error(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server)) as client:
        with pytest.raises(ClientError) as caught:
            await client.get("/nowhere")
        assert caught.value.code == "unknown_route"
        assert "/nowhere" in caught.value.message
        assert caught.value.response is not None
        assert caught.value.response.header == {"error": "unknown_route"}
        # the connection stays usable
        assert (await client.get("/echo")).header == {"seen": "GET"}
    async with Client(_url(server), raise_errors=False) as client:
        reply = await client.get("/nowhere")
        assert reply.header == {"error": "unknown_route"}


async def test_timeout(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server), timeout=0.3) as client:
        with pytest.raises(TimeoutError):
            await client.get("/slow")
        assert not client._pending
        # a late reply is dropped quietly and later requests still work
        assert (await client.request("GET", "/echo", timeout=5)).header == {"seen": "GET"}


async def test_subscribe_pushes_and_unsub_on_exit(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server)) as client:
        async with client.subscribe("/ticks", {"count": 3}) as stream:
            got = []
            async for push in stream:
                assert push.method is MethodType.SUB
                assert push.request_id == stream.request_id
                got.append(push.payload)
                if len(got) == 3:
                    break
            assert got == ["tick 0", "tick 1", "tick 2"]
            assert stream.request_id in server.streams
            await client.post("/push", {"to": stream.request_id, "message": "later"})
            assert (await anext(stream)).payload == "later"
        # UNSUB sent on exit: the server ends the stream
        for _ in range(100):
            if stream.request_id not in server.streams:
                break
            await asyncio.sleep(0.01)
        assert stream.request_id not in server.streams
        assert server.metrics.streams_active == 0
        assert not client._streams


async def test_entering_a_stream_waits_for_the_ack_then_pushes_flow(
    make_server: ServerFactory,
) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server)) as client, client.subscribe("/quiet") as stream:
        # the handler answered nothing; entering returned on the server's ack, so the
        # stream is subscribed and the ack itself is not one of the stream's messages
        assert stream.request_id in server.streams
        await client.post("/push", {"to": stream.request_id, "message": "hi"})
        push = await asyncio.wait_for(anext(stream), 3)
        assert push.payload == "hi" and "ack" not in push.header


async def test_refused_sub_raises_client_error(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server)) as client:
        # the refusal is raised when the stream is opened, not later
        with pytest.raises(ClientError) as caught:
            await client.subscribe("/nowhere").__aenter__()
        assert caught.value.code == "unknown_route"
        with pytest.raises(ClientError) as caught:
            async with client.subscribe("/nowhere") as stream:
                async for _ in stream:
                    raise AssertionError("no push expected")
        assert caught.value.code == "unknown_route"
        with pytest.raises(ClientError) as caught:
            async with client.subscribe("/echo") as stream:
                await anext(stream)
        assert caught.value.code == "method_not_allowed"
        assert not client._streams
        assert (await client.get("/echo")).header == {"seen": "GET"}


async def test_gap_notice_is_delivered(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server)) as client, client.subscribe("/quiet") as stream:
        await client.get("/echo")  # the SUB is processed before this reply
        server.streams[stream.request_id].on_gap("test")
        notice = await asyncio.wait_for(anext(stream), 3)
        assert notice.header == {"notice": "gap"}
        assert json.loads(notice.payload)["code"] == "gap"


async def test_stream_overflow_ends_the_stream(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    async with Client(_url(server), max_queue=2) as client:
        got: list[str] = []
        with pytest.raises(ClientError) as caught:
            async with client.subscribe("/ticks", {"count": 5}) as stream:
                await client.get("/echo")  # all five ticks are in by now
                async for push in stream:
                    got.append(push.payload)
        # what was buffered is delivered, then the overflow is an error, not a silent drop
        assert got == ["tick 0", "tick 1"]
        assert caught.value.code == "client_overflow"
        for _ in range(100):
            if stream.request_id not in server.streams:
                break
            await asyncio.sleep(0.01)
        assert stream.request_id not in server.streams
    del got


async def test_server_going_away_ends_requests_and_streams(make_server: ServerFactory) -> None:
    _routes()
    # /slow takes 2 s, longer than the drain allows: the request is cancelled
    server = await make_server(drain_timeout=0.3)
    client = await Client(_url(server)).connect()
    try:
        async with client.subscribe("/quiet") as stream:
            slow = asyncio.ensure_future(client.get("/slow"))
            await asyncio.sleep(0.1)
            await server.close()
            with pytest.raises(ConnectionClosed):
                await slow
            assert [push async for push in stream] == []
    finally:
        await client.close()


def _client_tasks(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks() - before
        if getattr(task.get_coro(), "__qualname__", "").startswith(("Client.", "Stream."))
    ]


async def test_no_task_leaks_after_close(make_server: ServerFactory) -> None:
    _routes()
    server = await make_server()
    before = asyncio.all_tasks()
    for _ in range(3):
        async with Client(_url(server), max_queue=1) as client:
            assert _client_tasks(before)  # the reader runs while connected
            await client.get("/echo")
            async with client.subscribe("/ticks", {"count": 1}) as stream:
                await anext(stream)
            with pytest.raises(ClientError):  # overflow: an UNSUB task is spawned
                async with client.subscribe("/ticks", {"count": 3}) as stream:
                    await client.get("/echo")
                    async for _push in stream:
                        pass
        assert client.closed
    assert _client_tasks(before) == []


async def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        Client("ws://x", timeout=0)
    client = Client("ws://127.0.0.1:1")
    with pytest.raises(RuntimeError):
        await client.get("/echo")
    with pytest.raises(TypeError):
        client.subscribe("/x", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await client.request("SUB", "/x")


async def _http_get(port: int, path: str) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return head.decode(), body


async def test_every_server_serves_the_browser_client(make_server: ServerFactory) -> None:
    server = await make_server()
    head, body = await _http_get(server.port, "/_xraptor/client.js")
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/javascript" in head.lower()
    assert b"export class XRaptorClient" in body


async def test_demo_serves_the_chat_page_and_websocket_on_slash() -> None:
    from xraptor import demo

    for route in ("/chat_messages", "/send_message_to_chat_room"):
        XRaptor.register(route)
    XRaptor.register("/chat_messages").as_sub(demo.join_chat)
    XRaptor.register("/send_message_to_chat_room").as_post(demo.send_message)
    server = demo.make_server("127.0.0.1", 0)
    await server.start()
    try:
        head, body = await _http_get(server.port, "/")
        assert "content-type: text/html" in head.lower()
        assert b'from "./_xraptor/client.js"' in body  # relative: works under a mount path
        # a WebSocket on "/" still opens
        async with (
            Client(_url(server) + "/") as client,
            client.subscribe("/chat_messages", {"chat_id": "r"}) as stream,
        ):
            await client.post(
                "/send_message_to_chat_room",
                {"chat_id": "r", "client_id": "me", "message": "x"},
            )
            push = await asyncio.wait_for(anext(stream), 3)
            assert json.loads(push.payload) == {"origin": "me", "message": "x"}
    finally:
        await server.close()
