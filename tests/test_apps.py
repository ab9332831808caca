"""App instances: routes, middlewares, guards, rooms, streams and antennas per app;
the class-level (0.4) API is the default app, which every app also serves."""

from __future__ import annotations

import json
from typing import ClassVar

from core_support import ClientFactory, ServerFactory, error_code
from xraptor import Broadcast, Request, Response, XRaptor
from xraptor.antennas import MemoryAntenna


class OwnBusAntenna(MemoryAntenna):
    """A memory antenna with a bus of its own: a second, separate "broker"."""

    name: ClassVar[str] = "own-bus"
    _bus: ClassVar[dict[str, list[MemoryAntenna]]] = {}


def _chat(app: XRaptor) -> None:
    @app.register("/room").as_sub
    async def join(request: Request) -> None:
        # the class-level 0.4 call means the app serving this request
        Broadcast.get(request.payload).add_member(request.request_id)

    @app.register("/room").as_post
    async def post(request: Request) -> Response:
        await XRaptor.get_antenna().post(request.payload, "hello from " + request.route)
        return Response.create(request.request_id, {}, "posted")


async def test_two_apps_see_nothing_of_each_other(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    @XRaptor.register("/shared").as_get
    async def shared(request: Request) -> Response:
        return Response.create(request.request_id, {}, "default app")

    one = XRaptor("127.0.0.1", 0, antenna=MemoryAntenna())
    two = XRaptor("127.0.0.1", 0, antenna=OwnBusAntenna())

    @one.register("/only-one").as_get
    async def only_one(request: Request) -> Response:
        return Response.create(request.request_id, {}, "one")

    @two.register("/only-two").as_get
    async def only_two(request: Request) -> Response:
        return Response.create(request.request_id, {}, "two")

    _chat(one)
    _chat(two)
    await one.start()
    await two.start()
    try:
        a, b = await make_client(one), await make_client(two)
        assert (await a.request("/only-one"))["payload"] == "one"
        assert error_code(await a.request("/only-two")) == "unknown_route"
        assert (await b.request("/only-two"))["payload"] == "two"
        assert error_code(await b.request("/only-one")) == "unknown_route"
        # class-level registrations belong to the default app, which both serve
        assert (await a.request("/shared"))["payload"] == "default app"
        assert (await b.request("/shared"))["payload"] == "default app"

        # the same request_id is a stream of each app, and the same room id two rooms
        await a.send("/room", "SUB", "lobby", request_id="same-id", header={"ack": True})
        await b.send("/room", "SUB", "lobby", request_id="same-id", header={"ack": True})
        assert (await a.recv())["header"] == {"ack": True}
        assert (await b.recv())["header"] == {"ack": True}
        assert set(one.streams) == {"same-id"} and set(two.streams) == {"same-id"}
        assert one.rooms["lobby"] is not two.rooms["lobby"]
        assert Broadcast.get("lobby", app=one).members == ["same-id"]

        poster = await make_client(one)
        assert (await poster.request("/room", "POST", "lobby"))["payload"] == "posted"
        assert (await a.recv())["payload"] == "hello from /room"
        assert await b.nothing(0.2)
    finally:
        await one.close()
        await two.close()


async def test_instance_middlewares_and_guards_stay_on_their_app(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    seen: list[str] = []

    @XRaptor.middleware(priority=1)
    async def everywhere(request: Request, connection: object) -> None:
        seen.append("default:" + request.route)

    @XRaptor.register("/x").as_get
    async def x(request: Request) -> Response:
        return Response.create(request.request_id, {}, "handler")

    one = await make_server()
    two = XRaptor("127.0.0.1", 0)

    @two.middleware(priority=1)  # the same priority as the default app's: allowed
    async def only_two(request: Request, connection: object) -> Response:
        seen.append("two:" + request.route)
        return Response.create(request.request_id, {"by": "two"}, "answered by middleware")

    await two.start()
    try:
        assert (await (await make_client(one)).request("/x"))["payload"] == "handler"
        answer = await (await make_client(two)).request("/x")
        assert answer["payload"] == "answered by middleware"
        assert seen == ["default:/x", "default:/x", "two:/x"]
    finally:
        await two.close()


async def test_class_level_calls_in_a_handler_mean_the_serving_app(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    @XRaptor.register("/which").as_get
    async def which(request: Request) -> Response:
        antenna = XRaptor.get_antenna()
        metrics = XRaptor.get_metrics()
        return Response.create(request.request_id, {}, json.dumps([id(antenna), id(metrics)]))

    one = await make_server()
    two = await make_server()
    got_one = json.loads((await (await make_client(one)).request("/which"))["payload"])
    got_two = json.loads((await (await make_client(two)).request("/which"))["payload"])
    assert got_one == [id(one.antenna), id(one.metrics)]
    assert got_two == [id(two.antenna), id(two.metrics)]


async def test_an_instance_route_wins_over_the_default_apps_for_its_method(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    @XRaptor.register("/r").as_get
    async def default_get(request: Request) -> Response:
        return Response.create(request.request_id, {}, "default get")

    @XRaptor.register("/r").as_post
    async def default_post(request: Request) -> Response:
        return Response.create(request.request_id, {}, "default post")

    app = XRaptor("127.0.0.1", 0)

    @app.register("/r").as_get
    async def own_get(request: Request) -> Response:
        return Response.create(request.request_id, {}, "own get")

    await app.start()
    try:
        client = await make_client(app)
        assert (await client.request("/r"))["payload"] == "own get"
        assert (await client.request("/r", "POST"))["payload"] == "default post"
        assert app.route_matcher(*_get("/r")) is own_get
        assert XRaptor.route_matcher(*_get("/r")) is default_get
    finally:
        await app.close()


def _get(route: str) -> tuple[object, str]:
    from xraptor import MethodType

    return MethodType.GET, route


async def test_middlewares_read_the_handshake_headers_from_the_connection(
    make_server: ServerFactory,
) -> None:
    from xraptor import Client, Connection

    @XRaptor.middleware(priority=1)
    async def team(request: Request, connection: Connection) -> Response:
        seen = [connection.headers.get("x-team"), connection.path, connection.remote_ip]
        return Response.create(request.request_id, {}, json.dumps(seen))

    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}/teams"
    async with Client(url, headers={"X-Team": "blue"}) as client:
        assert json.loads((await client.get("/anything")).payload) == [
            "blue",
            "/teams",
            "127.0.0.1",
        ]
