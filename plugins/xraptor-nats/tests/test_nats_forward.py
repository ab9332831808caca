"""The nats-forward middleware against responders written here with nats-py."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from xraptor import get_plugins
from xraptor.protocol import MethodType, Request
from xraptor_nats.forward import NatsForward, close_all, route_subject


def _request(route: str = "/svc/echo", method: MethodType = MethodType.GET) -> Request:
    return Request(request_id="r-1", payload="hello", header={"k": "v"}, route=route, method=method)


@pytest_asyncio.fixture
async def service(nats_url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


@pytest_asyncio.fixture
async def forward(nats_url: str) -> AsyncIterator[NatsForward]:
    factory = get_plugins().middlewares.get("nats-forward")
    middleware = factory(servers=nats_url, timeout=0.5)
    assert isinstance(middleware, NatsForward)
    yield middleware
    await middleware.close()


def test_subject_scheme_is_documented_form() -> None:
    token = base64.urlsafe_b64encode(b"/svc/echo").rstrip(b"=").decode()
    assert route_subject("/svc/echo") == f"xraptor.rpc.b{token}"
    assert route_subject("/svc/echo", "apps.rpc") == f"apps.rpc.b{token}"
    assert route_subject("x" * 1000).startswith("xraptor.rpc.h")


async def test_forwards_and_returns_the_reply(service: Client, forward: NatsForward) -> None:
    seen: list[dict[str, object]] = []

    async def respond(msg: Msg) -> None:
        request = json.loads(msg.data)
        seen.append(request)
        await msg.respond(f"echo:{request['payload']}".encode())

    await service.subscribe(route_subject("/svc/echo"), cb=respond)
    await service.flush()
    await service.flush()  # nats-py's flush PING can overtake the SUB
    response = await forward(_request(), None)
    assert response.request_id == "r-1"
    assert response.payload == "echo:hello"
    assert response.header == {}
    assert response.method is MethodType.GET
    assert seen == [
        {
            "request_id": "r-1",
            "payload": "hello",
            "header": {"k": "v"},
            "route": "/svc/echo",
            "method": "GET",
        }
    ]


async def test_reply_headers_become_response_header(service: Client, forward: NatsForward) -> None:
    async def respond(msg: Msg) -> None:
        await service.publish(msg.reply, "olá".encode(), headers={"x-served-by": "py"})

    await service.subscribe(route_subject("/svc/h"), cb=respond)
    await service.flush()
    await service.flush()  # nats-py's flush PING can overtake the SUB
    response = await forward(_request("/svc/h", MethodType.POST), None)
    assert response.payload == "olá"
    assert response.header == {"x-served-by": "py"}
    assert response.method is MethodType.POST


async def test_routes_do_not_reach_other_services(service: Client, forward: NatsForward) -> None:
    async def respond(msg: Msg) -> None:
        await msg.respond(b"wrong")

    # a service for "/svc/a" must not answer "/svc/*", "/svc/a " or "/svc/a.b"
    await service.subscribe(route_subject("/svc/a"), cb=respond)
    await service.flush()
    await service.flush()  # nats-py's flush PING can overtake the SUB
    for route in ["/svc/*", "/svc/>", "/svc/a ", "/svc/a.b", "/svc/a\r\n"]:
        response = await forward(_request(route), None)
        assert response.header == {"error": "no_responders"}, route


async def test_no_responders(forward: NatsForward) -> None:
    response = await forward(_request("/svc/nobody"), None)
    assert response.request_id == "r-1"
    assert response.header == {"error": "no_responders"}
    assert json.loads(response.payload)["code"] == "no_responders"
    assert "/svc/nobody" in json.loads(response.payload)["message"]


async def test_upstream_timeout(service: Client, forward: NatsForward) -> None:
    async def too_slow(msg: Msg) -> None:
        await asyncio.sleep(2)

    await service.subscribe(route_subject("/svc/slow"), cb=too_slow)
    await service.flush()
    await service.flush()  # nats-py's flush PING can overtake the SUB
    started = time.monotonic()
    response = await forward(_request("/svc/slow"), None)
    assert 0.4 < time.monotonic() - started < 1.5
    assert response.header == {"error": "upstream_timeout"}
    assert json.loads(response.payload)["code"] == "upstream_timeout"


async def test_unreachable_nats_is_an_error_response() -> None:
    forward = NatsForward(servers="nats://127.0.0.1:1", connect_timeout=0.3)
    response = await forward(_request(), None)
    assert response.header == {"error": "backend_unavailable"}
    started = time.monotonic()
    response = await forward(_request(), None)  # just failed: no new attempt yet
    assert response.header == {"error": "backend_unavailable"}
    assert time.monotonic() - started < 0.1
    await forward.close()


async def test_one_connection_and_close_all(service: Client, nats_url: str) -> None:
    async def respond(msg: Msg) -> None:
        await msg.respond(b"ok")

    await service.subscribe(route_subject("/svc/ok"), cb=respond)
    await service.flush()
    await service.flush()  # nats-py's flush PING can overtake the SUB
    forward = NatsForward(servers=nats_url)
    results = await asyncio.gather(*(forward(_request("/svc/ok"), None) for _ in range(50)))
    assert {r.payload for r in results} == {"ok"}
    nc = forward._nc
    assert nc is not None
    await close_all()
    assert nc.is_closed
    # a closed forwarder reconnects on its next request
    assert (await forward(_request("/svc/ok"), None)).payload == "ok"
    await forward.close()


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"subject_prefix": "a.>"}, {"servers": []}, {"subject_prefix": "a b"}],
)
def test_bad_options(options: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        NatsForward(**options)  # type: ignore[arg-type]


async def test_server_shutdown_hook_closes_forwarders(service: Client, nats_url: str) -> None:
    async def respond(msg: Msg) -> None:
        await msg.respond(b"ok")

    await service.subscribe(route_subject("/svc/ok2"), cb=respond)
    await service.flush()
    await service.flush()
    forward = NatsForward(servers=nats_url)
    assert (await forward(_request("/svc/ok2"), None)).payload == "ok"
    nc = forward._nc
    await get_plugins().call_lifecycle("xraptor_shutdown", server=object())
    assert nc is not None and nc.is_closed
