"""End to end: request/response round trips, middleware and every bad input."""

from __future__ import annotations

import json
import logging

import pytest

import xraptor
from core_support import ClientFactory, ServerFactory, error_code
from xraptor import MethodType, Request, Response, XRaptor


def _echo_routes() -> None:
    @XRaptor.register("/echo").as_get
    async def get(request: Request) -> Response:
        return Response.create(request.request_id, {"seen": "get"}, request.payload, request.method)

    @XRaptor.register("/echo").as_post
    async def post(request: Request) -> Response:
        return Response.create(
            request.request_id, {"seen": "post"}, request.payload.upper(), request.method
        )

    @XRaptor.register("/echo").as_put
    async def put(request: Request) -> Response:
        return Response.create(request.request_id, request.header, "put:" + request.payload)

    @XRaptor.register("/boom").as_get
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internals")

    @XRaptor.register("/bad-return").as_get
    async def bad_return(request: Request) -> str:
        return "not a response"

    @XRaptor.register("/silent").as_post
    async def silent(request: Request) -> None:
        return None


async def test_get_post_put_round_trips(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _echo_routes()
    client = await make_client(await make_server())
    got = await client.request("/echo", "GET", "hello")
    assert got["payload"] == "hello" and got["method"] == "GET" and got["header"] == {"seen": "get"}
    posted = await client.request("/echo", "post", "hello")
    assert posted["payload"] == "HELLO" and posted["method"] == "POST"
    put = await client.request("/echo", "PUT", "x", header={"k": "v"})
    # a Response created without a method answers with the request's method
    assert put == {
        "request_id": put["request_id"],
        "payload": "put:x",
        "header": {"k": "v"},
        "method": "PUT",
    }


async def test_decorators_return_the_function() -> None:
    async def handler(request: Request) -> None:
        return None

    assert XRaptor.register("/r").as_get(handler) is handler
    assert XRaptor.register("/r") is XRaptor.register("/r")
    assert XRaptor.route_matcher(MethodType.GET, "/r") is handler


async def test_handler_returning_none_sends_nothing(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _echo_routes()
    client = await make_client(await make_server())
    await client.send("/silent", "POST")
    assert await client.nothing()


@pytest.mark.parametrize(
    ("raw", "code", "request_id", "method"),
    [
        ("{not json", "invalid_json", "", "ERROR"),
        (b"\xff\xfe", "invalid_json", "", "ERROR"),
        ("[1, 2]", "invalid_request", "", "ERROR"),
        ('"a string"', "invalid_request", "", "ERROR"),
        (
            '{"request_id": "r1", "payload": "", "header": {}, "method": "GET"}',
            "missing_field",
            "r1",
            "GET",
        ),
        (
            '{"request_id": 7, "payload": "", "header": {}, "route": "/echo", "method": "GET"}',
            "invalid_field",
            "",
            "GET",
        ),
        (
            '{"request_id": "r2", "payload": {}, "header": {}, "route": "/echo", "method": "GET"}',
            "invalid_field",
            "r2",
            "GET",
        ),
        (
            '{"request_id": "r3", "payload": "", "header": [], "route": "/echo", "method": "GET"}',
            "invalid_field",
            "r3",
            "GET",
        ),
        (
            '{"request_id": "r4", "payload": "", "header": {}, "route": "/echo", "method": "DELETE"}',
            "unknown_method",
            "r4",
            "ERROR",
        ),
        (
            '{"request_id": "r5", "payload": "", "header": {}, "route": "/nowhere", "method": "GET"}',
            "unknown_route",
            "r5",
            "GET",
        ),
        (
            '{"request_id": "r6", "payload": "", "header": {}, "route": "/silent", "method": "GET"}',
            "method_not_allowed",
            "r6",
            "GET",
        ),
        (
            '{"request_id": "r7", "payload": "", "header": {}, "route": "/boom", "method": "GET"}',
            "handler_error",
            "r7",
            "GET",
        ),
        (
            '{"request_id": "r8", "payload": "", "header": {}, "route": "/bad-return", "method": "GET"}',
            "invalid_response",
            "r8",
            "GET",
        ),
        (
            '{"request_id": "r9", "payload": "", "header": {}, "route": "/echo", "method": "UNSUB"}',
            "unknown_stream",
            "r9",
            "UNSUB",
        ),
    ],
)
async def test_bad_input_gets_an_error_and_the_connection_stays_usable(
    make_server: ServerFactory,
    make_client: ClientFactory,
    raw: str | bytes,
    code: str,
    request_id: str,
    method: str,
) -> None:
    _echo_routes()
    server = await make_server()
    client = await make_client(server)
    await client.send_raw(raw)
    answer = await client.recv()
    assert error_code(answer) == code
    assert answer["request_id"] == request_id
    assert answer["method"] == method
    assert "secret internals" not in answer["payload"]
    assert (await client.request("/echo", "GET", "still here"))["payload"] == "still here"
    assert server.metrics.request_errors_total == 1


async def test_logs_echo_only_a_short_prefix(
    make_server: ServerFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client(await make_server())
    secret = "A" * 5000
    await client.send_raw("{" + secret)
    assert error_code(await client.recv()) == "invalid_json"
    assert caplog.text and "A" * 100 not in caplog.text


async def test_middleware_order_pattern_and_short_circuit(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _echo_routes()
    calls: list[str] = []

    @XRaptor.middleware(priority=2)
    async def second(request: Request, connection: xraptor.Connection) -> Response | None:
        calls.append("second")
        if request.header.get("token") != "ok":
            return xraptor.error_response("unauthorized", "token required", request)
        return None

    @XRaptor.middleware(priority=1, pattern=r"^/echo")
    async def first(request: Request, connection: xraptor.Connection) -> Response | None:
        calls.append("first")
        assert connection.remote_ip == "127.0.0.1"
        return None

    client = await make_client(await make_server())
    refused = await client.request("/echo", "GET", "x")
    assert error_code(refused) == "unauthorized" and refused["method"] == "GET"
    assert calls == ["first", "second"]
    calls.clear()
    assert (await client.request("/echo", "GET", "x", header={"token": "ok"}))["payload"] == "x"
    assert calls == ["first", "second"]
    calls.clear()
    await client.request("/nowhere", "GET", header={"token": "ok"})
    assert calls == ["second"]


async def test_middleware_registration_errors() -> None:
    async def mw(request: Request, connection: object) -> None:
        return None

    XRaptor.middleware(priority=1)(mw)
    with pytest.raises(ValueError, match="priority 1 already registered"):
        XRaptor.middleware(priority=1)(mw)
    with pytest.raises(ValueError, match="invalid middleware pattern"):
        XRaptor.middleware(priority=3, pattern="([unclosed")(mw)


async def test_failing_middleware_is_an_error_response(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _echo_routes()

    @XRaptor.middleware(priority=1)
    async def broken(request: Request, connection: object) -> None:
        raise KeyError("oops")

    client = await make_client(await make_server())
    assert error_code(await client.request("/echo", "GET")) == "middleware_error"


async def test_health_and_metrics(make_server: ServerFactory, make_client: ClientFactory) -> None:
    import urllib.request

    _echo_routes()
    server = await make_server()
    client = await make_client(server)
    await client.request("/echo", "GET", "x")
    await client.send_raw("nope")
    await client.recv()

    def fetch(path: str) -> tuple[int, str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}") as response:
            return response.status, response.headers["Content-Type"], response.read().decode()

    import asyncio

    status, kind, body = await asyncio.to_thread(fetch, "/health")
    health = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert health["status"] == "ok" and health["active_connections"] == 1
    assert health["antenna"] == {"name": "memory", "state": "up", "channels": 0}
    status, kind, text = await asyncio.to_thread(fetch, "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert "xraptor_requests_total 2" in text
    assert "xraptor_request_errors_total 1" in text
    assert 'xraptor_antenna_up{antenna="memory"} 1' in text


async def test_a_message_the_backend_refuses_as_too_large_is_a_clear_error(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    class SmallAntenna(xraptor.antennas.MemoryAntenna):
        name = "small"

        async def publish(self, channel: str, message: str) -> None:
            if len(message) > 10:
                raise xraptor.MessageTooLarge(f"{len(message)} bytes is over 10")
            await super().publish(channel, message)

    @XRaptor.register("/say").as_post
    async def say(request: Request) -> Response:
        await XRaptor.get_antenna().post("somewhere", request.payload)
        return Response.create(request.request_id, {}, "sent")

    client = await make_client(await make_server(antenna=SmallAntenna()))
    assert (await client.request("/say", "POST", "short"))["payload"] == "sent"
    refused = await client.request("/say", "POST", "far too long for it")
    assert error_code(refused) == "message_too_large"
    assert "over 10" in json.loads(refused["payload"])["message"]


async def test_built_in_ping_route_answers_in_order(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    client = await make_client(await make_server())
    await client.send("/nowhere", "SUB", request_id="refused")
    refused = await client.recv()
    pong = await client.request("/_xraptor/ping", "GET")
    assert error_code(refused) == "unknown_route"
    assert pong["payload"] == "pong" and pong["method"] == "GET"
