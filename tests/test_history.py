"""Room history, positions and recovery (issue 12), against a real server and real clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest
from websockets.asyncio.client import connect

import xraptor
from xraptor import Broadcast, Client, ClientError, Request, Response, XRaptor
from xraptor.antenna import Antenna, HistoryNotSupported
from xraptor.antennas import MemoryAntenna
from xraptor.history import HistoryEntry, Position


class LaggyMemoryAntenna(MemoryAntenna):
    """The memory antenna with a backend's latency around each history read, so that
    messages are published while a recovery reads (before and after the read)."""

    name: ClassVar[str] = "laggy-memory"

    async def read_history(self, channel: str, after: Position) -> list[HistoryEntry] | None:
        await asyncio.sleep(0.02)
        entries = await super().read_history(channel, after)
        await asyncio.sleep(0.02)
        return entries


class PlainAntenna(Antenna):
    """An antenna of the base contract only (no history), over the memory bus."""

    name: ClassVar[str] = "plain-test"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._inner = MemoryAntenna()

    async def connect(self) -> None:
        await self._inner.start()

    async def disconnect(self) -> None:
        await self._inner.close()

    async def publish(self, channel: str, message: str) -> None:
        await self._inner.publish(channel, message)

    async def watch(self, channel: str) -> None:
        await self._inner.listen(channel, self)

    async def unwatch(self, channel: str) -> None:
        await self._inner.unlisten(channel, self)

    async def is_alive(self, channel: str) -> bool:
        return await self._inner.is_alive(channel)

    def on_message(self, channel: str, message: str) -> None:
        self.deliver(channel, message)

    def on_gap(self, channel: str) -> None:
        return None


def routes(app: XRaptor) -> XRaptor:
    """The chat of the README on ``app``: SUB /room joins rooms, POST /say posts."""

    @app.register("/room").as_sub
    async def join(request: Request) -> Response | None:
        data = json.loads(request.payload)
        if data.get("refuse"):
            return xraptor.error_response("forbidden", "not in this room", request)
        for room in data.get("rooms", [data.get("room")]):
            Broadcast.get(room, app=app).add_member(request.request_id)
        if data.get("linger"):  # a handler that awaits something after joining
            await asyncio.sleep(data["linger"])
        return None

    @app.register("/say").as_post
    async def say(request: Request) -> Response:
        data = json.loads(request.payload)
        if data.get("via") == "broadcast":
            await Broadcast.get(data["room"], app=app).post(data["text"])
        else:
            await app.get_antenna().post(data["room"], data["text"])
        return Response.create(request.request_id, {}, "ok")

    return app


@asynccontextmanager
async def serving(app: XRaptor) -> AsyncIterator[str]:
    await app.start()
    try:
        yield f"ws://127.0.0.1:{app.port}"
    finally:
        await app.close()


def chat(*patterns: tuple[str, dict[str, Any]], antenna: object = "memory") -> XRaptor:
    app = routes(XRaptor("127.0.0.1", 0, antenna=antenna))
    for pattern, options in patterns:
        app.configure_rooms(pattern, **options)
    return app


async def take(stream: xraptor.client.Stream, count: int) -> list[Response]:
    return [await asyncio.wait_for(anext(stream), 5) for _ in range(count)]


async def quiet(stream: xraptor.client.Stream, seconds: float = 0.3) -> bool:
    try:
        push = await asyncio.wait_for(anext(stream), seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected push: {push!r}")


async def say(client: Client, room: str, *texts: str) -> None:
    for text in texts:
        await client.post("/say", {"room": room, "text": text})


def since(room: str, position: str) -> dict[str, Any]:
    return {"since": {room: position}}


# ----- positions ------------------------------------------------------------------------


async def test_pushes_of_a_room_with_history_carry_room_and_position() -> None:
    async with (
        serving(chat(("chat:", {"history_size": 100}))) as url,
        Client(url) as member,
        Client(url) as poster,
        member.subscribe("/room", {"room": "chat:1"}) as stream,
    ):
        await say(poster, "chat:1", *(f"m{i}" for i in range(5)))
        pushes = await take(stream, 5)
    assert [push.payload for push in pushes] == [f"m{i}" for i in range(5)]
    assert all(set(push.header) == {"room", "position"} for push in pushes)
    assert {push.header["room"] for push in pushes} == {"chat:1"}
    positions = [Position.parse(push.header["position"]) for push in pushes]
    assert len({p.epoch for p in positions}) == 1
    assert [p.offset for p in positions] == sorted({p.offset for p in positions})


async def test_broadcast_post_keeps_history_too() -> None:
    async with (
        serving(chat(("chat:", {"history_size": 100}))) as url,
        Client(url) as member,
        Client(url) as poster,
        member.subscribe("/room", {"room": "chat:b"}) as stream,
    ):
        await poster.post("/say", {"room": "chat:b", "text": "hi", "via": "broadcast"})
        (push,) = await take(stream, 1)
    assert push.payload == "hi" and push.header["room"] == "chat:b"
    Position.parse(push.header["position"])


async def test_a_room_without_history_is_pushed_as_before() -> None:
    """Same frame, byte for byte, as without configure_rooms: no room, no position."""
    app = chat(("chat:", {"history_size": 100}))
    async with serving(app) as url, connect(url) as ws, Client(url) as poster:
        sub = {"request_id": "s1", "payload": '{"room": "lobby"}', "header": {"ack": True}}
        await ws.send(json.dumps({**sub, "route": "/room", "method": "SUB"}))
        assert json.loads(await ws.recv())["header"] == {"ack": True}
        await say(poster, "lobby", "plain")
        frame = await asyncio.wait_for(ws.recv(), 5)
    assert frame == '{"request_id":"s1","payload":"plain","header":{},"method":"SUB"}'


# ----- configure_rooms ----------------------------------------------------------------------


async def test_configure_rooms_on_the_class_and_on_an_instance() -> None:
    XRaptor.configure_rooms(r"class:", history_size=10)  # the default app: every app
    own = chat((r"own:", {"history_size": 10}))
    bare = chat()
    for app, with_history in ((own, {"class:1", "own:1"}), (bare, {"class:1"})):
        async with serving(app) as url, Client(url) as member, Client(url) as poster:
            for room in ("class:1", "own:1", "none:1"):
                async with member.subscribe("/room", {"room": room}) as stream:
                    await say(poster, room, "x")
                    (push,) = await take(stream, 1)
                    assert ("position" in push.header) == (room in with_history), (app, room)


def test_the_last_matching_call_wins() -> None:
    XRaptor.configure_rooms(r"chat:", history_size=50)
    XRaptor.configure_rooms(r"chat:big", history_size=500, history_ttl=60)
    app = XRaptor(antenna="memory")
    app.configure_rooms(r"chat:", history_size=5)
    app.configure_rooms(r"chat:quiet", history_size=0)
    XRaptor.configure_rooms(r"chat:late", history_size=7)  # the app's own calls still win
    resolver = app.history_resolver()
    assert resolver is not None
    sizes = {
        room: (policy.size, policy.ttl) if (policy := resolver(room)) is not None else None
        for room in ("chat:1", "chat:big", "chat:quiet", "chat:late", "other", "x-chat:1")
    }
    assert sizes == {
        "chat:1": (5, None),
        "chat:big": (5, None),
        "chat:quiet": None,
        "chat:late": (5, None),
        "other": None,
        "x-chat:1": None,  # re.match: the pattern matches at the start of the room id
    }
    default = XRaptor(antenna="memory").history_resolver()  # the class-level calls only
    assert default is not None
    rooms = ("chat:1", "chat:big", "chat:late")
    assert [p.size if (p := default(room)) else 0 for room in rooms] == [50, 500, 7]


def test_configure_rooms_refuses_what_it_cannot_do() -> None:
    app = XRaptor(antenna="memory")
    with pytest.raises(ValueError, match="invalid room pattern"):
        app.configure_rooms("(", history_size=1)
    with pytest.raises(ValueError, match="history_size"):
        app.configure_rooms("x", history_size=-1)
    with pytest.raises(ValueError, match="history_ttl"):
        app.configure_rooms("x", history_size=1, history_ttl=0)
    with pytest.raises(ValueError, match="needs a history_size"):
        app.configure_rooms("x", history_ttl=5)
    with pytest.raises(TypeError, match="presence must be a bool"):
        app.configure_rooms("x", presence="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="join_leave=True needs presence=True"):
        app.configure_rooms("x", join_leave=True)
    assert app.history_resolver() is None


async def test_configure_rooms_after_start_is_refused() -> None:
    app = chat()
    async with serving(app):
        with pytest.raises(RuntimeError, match="before start"):
            app.configure_rooms("chat:", history_size=5)


async def test_an_antenna_without_history_refuses_configured_rooms() -> None:
    app = chat(("chat:", {"history_size": 5}), antenna=PlainAntenna())
    with pytest.raises(HistoryNotSupported, match="cannot keep room history"):
        await app.start()
    assert not app.running
    plain = chat(("chat:", {"history_size": 0}), antenna=PlainAntenna())  # no history: fine
    async with (
        serving(plain) as url,
        Client(url) as member,
        Client(url) as poster,
        member.subscribe("/room", {"room": "chat:1"}, since("chat:1", "e:1")) as stream,
    ):
        (notice,) = await take(stream, 1)
        assert notice.header == {"notice": "unrecovered", "room": "chat:1"}
        await say(poster, "chat:1", "live")
        assert [push.payload for push in await take(stream, 1)] == ["live"]


# ----- recovery -------------------------------------------------------------------------------


async def test_recovers_what_was_missed_then_goes_live() -> None:
    app = chat(("chat:", {"history_size": 100}))
    async with serving(app) as url, Client(url) as poster:
        async with Client(url) as member, member.subscribe("/room", {"room": "chat:r"}) as stream:
            await say(poster, "chat:r", "a0", "a1", "a2")
            seen = await take(stream, 3)
        last = seen[-1].header["position"]
        await say(poster, "chat:r", "b0", "b1", "b2", "b3")  # while the member is away
        async with (
            Client(url) as member,
            member.subscribe("/room", {"room": "chat:r"}, since("chat:r", last)) as stream,
        ):
            missed = await take(stream, 4)
            await say(poster, "chat:r", "c0")
            live = await take(stream, 1)
            assert await quiet(stream)
    assert [push.payload for push in missed + live] == ["b0", "b1", "b2", "b3", "c0"]
    offsets = [Position.parse(push.header["position"]).offset for push in seen + missed + live]
    assert offsets == sorted(set(offsets))
    assert app.metrics.recoveries_total == 1 and app.metrics.unrecovered_total == 0


async def test_recovers_several_rooms_of_one_stream() -> None:
    rooms = {"rooms": ["r:1", "r:2"]}
    async with serving(chat(("r:", {"history_size": 10}))) as url, Client(url) as poster:
        await say(poster, "r:1", "one-0")
        await say(poster, "r:2", "two-0")
        async with Client(url) as member, member.subscribe("/room", rooms) as stream:
            await say(poster, "r:1", "one-1")
            await say(poster, "r:2", "two-1")
            marks = {p.header["room"]: p.header["position"] for p in await take(stream, 2)}
        await say(poster, "r:1", "one-2")
        await say(poster, "r:2", "two-2")
        async with (
            Client(url) as member,
            member.subscribe("/room", rooms, {"since": marks}) as stream,
        ):
            pushes = await take(stream, 2)
            assert await quiet(stream)
    assert sorted((p.header["room"], p.payload) for p in pushes) == [
        ("r:1", "one-2"),
        ("r:2", "two-2"),
    ]


@pytest.mark.parametrize("antenna", ["memory", "laggy"])
@pytest.mark.parametrize("linger", [0, 0.03])
async def test_posts_during_the_recovery_are_neither_lost_nor_repeated(
    antenna: str, linger: float
) -> None:
    """A publisher posts steadily (through another process's antenna) while the member
    leaves and comes back with since: the member's two sessions, together, are exactly
    the publisher's messages in order from the first it saw to the last posted."""
    app = chat(
        ("chat:", {"history_size": 10_000}),
        antenna=LaggyMemoryAntenna() if antenna == "laggy" else "memory",
    )
    publisher = chat(("chat:", {"history_size": 10_000}))  # another process, same bus
    total = 300
    posted = asyncio.Event()

    async def post_steadily(poster: Client) -> None:
        for i in range(total):
            await say(poster, "chat:steady", f"m{i}")
            if i == 20:
                posted.set()
            await asyncio.sleep(0.001 if i % 3 else 0)

    async with (
        serving(app) as url,
        serving(publisher) as publisher_url,
        Client(publisher_url) as poster,
    ):
        async with (
            Client(url) as member,
            member.subscribe("/room", {"room": "chat:steady"}) as stream,
        ):
            posting = asyncio.create_task(post_steadily(poster))
            await posted.wait()
            first_session = await take(stream, 10)
        await asyncio.sleep(0.02)
        mark = first_session[-1].header["position"]
        payload = {"room": "chat:steady", "linger": linger}
        async with (
            Client(url) as member,
            member.subscribe("/room", payload, since("chat:steady", mark)) as stream,
        ):
            second_session: list[Response] = []
            while not second_session or second_session[-1].payload != f"m{total - 1}":
                second_session += await take(stream, 1)
            await posting
            assert await quiet(stream, 0.1)
    texts = [push.payload for push in first_session + second_session]
    start = int(texts[0][1:])
    assert texts == [f"m{i}" for i in range(start, total)]
    assert "notice" not in {key for push in second_session for key in push.header}


async def test_other_members_are_not_held_back_by_a_recovery() -> None:
    async with (
        serving(chat(("chat:", {"history_size": 100}))) as url,
        Client(url) as poster,
        Client(url) as live,
        Client(url) as recovering,
        live.subscribe("/room", {"room": "chat:h"}) as live_stream,
    ):
        await say(poster, "chat:h", "first")
        (first,) = await take(live_stream, 1)
        header = since("chat:h", first.header["position"])
        slow_join = {"room": "chat:h", "linger": 0.3}
        opening = asyncio.create_task(recovering.subscribe("/room", slow_join, header).__aenter__())
        await asyncio.sleep(0.1)  # the recovering member joined; its handler lingers
        await say(poster, "chat:h", "during")
        (during,) = await take(live_stream, 1)
        assert during.payload == "during" and not opening.done()
        stream = await opening
        assert [push.payload for push in await take(stream, 1)] == ["during"]
        assert await quiet(stream)
        await stream.close()


async def test_a_position_trimmed_from_history_is_unrecovered() -> None:
    app = chat(("chat:", {"history_size": 3}))
    async with serving(app) as url, Client(url) as poster:
        async with Client(url) as member, member.subscribe("/room", {"room": "chat:t"}) as stream:
            await say(poster, "chat:t", "old")
            (old,) = await take(stream, 1)
        await say(poster, "chat:t", "n0", "n1", "n2")  # "old" falls out of the 3 kept
        header = since("chat:t", old.header["position"])
        async with (
            Client(url) as member,
            member.subscribe("/room", {"room": "chat:t"}, header) as stream,
        ):
            (notice,) = await take(stream, 1)
            await say(poster, "chat:t", "live")
            live = await take(stream, 1)
            assert await quiet(stream)
    assert notice.header == {"notice": "unrecovered", "room": "chat:t"}
    assert json.loads(notice.payload)["code"] == "unrecovered"
    assert [push.payload for push in live] == ["live"]
    assert app.metrics.unrecovered_total == 1


async def test_an_expired_position_is_unrecovered() -> None:
    app = chat(("chat:", {"history_size": 100, "history_ttl": 0.2}))
    async with serving(app) as url, Client(url) as poster, Client(url) as member:
        async with member.subscribe("/room", {"room": "chat:expiring"}) as stream:
            await say(poster, "chat:expiring", "soon gone")
            (gone,) = await take(stream, 1)
        await asyncio.sleep(0.4)
        header = since("chat:expiring", gone.header["position"])
        async with member.subscribe("/room", {"room": "chat:expiring"}, header) as stream:
            (notice,) = await take(stream, 1)
    assert notice.header == {"notice": "unrecovered", "room": "chat:expiring"}


async def test_an_unknown_epoch_is_unrecovered() -> None:
    async with (
        serving(chat(("chat:", {"history_size": 100}))) as url,
        Client(url) as poster,
        Client(url) as member,
        member.subscribe("/room", {"room": "chat:e"}) as stream,
    ):
        await say(poster, "chat:e", "m0", "m1")
        pushes = await take(stream, 2)
        position = Position.parse(pushes[0].header["position"])
        header = since("chat:e", f"other{position.epoch}:{position.offset}")
        async with member.subscribe("/room", {"room": "chat:e"}, header) as again:
            (notice,) = await take(again, 1)
            assert await quiet(again)
    assert notice.header == {"notice": "unrecovered", "room": "chat:e"}


async def test_since_for_a_room_without_history_is_unrecovered_and_others_ignored() -> None:
    header = {"since": {"lobby": "e:3", "chat:not-joined": "e:3"}}
    async with (
        serving(chat(("chat:", {"history_size": 100}))) as url,
        Client(url) as member,
        member.subscribe("/room", {"room": "lobby"}, header) as stream,
    ):
        (notice,) = await take(stream, 1)
        assert await quiet(stream)
    assert notice.header == {"notice": "unrecovered", "room": "lobby"}


@pytest.mark.parametrize(
    "bad",
    ["e:1", {"c:1": 5}, {"c:1": "no-colon"}, {"c:1": "a:b:1"}, {"c:1": ":1"}, {"c:1": "e:-1"}],
)
async def test_a_malformed_since_is_refused(bad: object) -> None:
    async with serving(chat(("c:", {"history_size": 100}))) as url, Client(url) as member:
        with pytest.raises(ClientError) as refused:
            await member.subscribe("/room", {"room": "c:1"}, {"since": bad}).__aenter__()
        assert refused.value.code == "invalid_field" and "since" in refused.value.message
        assert (await member.get("/_xraptor/ping")).payload == "pong"  # still usable


async def test_a_refused_sub_recovers_nothing() -> None:
    async with serving(chat(("chat:", {"history_size": 100}))) as url, Client(url) as poster:
        async with Client(url) as member, member.subscribe("/room", {"room": "chat:f"}) as stream:
            await say(poster, "chat:f", "m0", "m1")
            (first, _) = await take(stream, 2)
        async with connect(url) as ws:
            request = {
                "request_id": "r1",
                "payload": json.dumps({"room": "chat:f", "refuse": True}),
                "header": since("chat:f", first.header["position"]),
                "route": "/room",
                "method": "SUB",
            }
            await ws.send(json.dumps(request))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert answer["header"] == {"error": "forbidden"}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)


# ----- the Python client -----------------------------------------------------------------------


async def test_the_client_keeps_positions_and_resumes_from_them() -> None:
    app = chat(("chat:", {"history_size": 100}))
    rooms = {"rooms": ["chat:p1", "chat:p2", "lobby"]}
    async with serving(app) as url, Client(url) as poster:
        async with Client(url) as member, member.subscribe("/room", rooms) as stream:
            assert stream.positions == {}
            await say(poster, "chat:p1", "one-0", "one-1")
            await say(poster, "chat:p2", "two-0")
            await say(poster, "lobby", "no history")
            pushes = await take(stream, 4)
            positions = dict(stream.positions)
        assert positions == {
            "chat:p1": pushes[1].header["position"],
            "chat:p2": pushes[2].header["position"],
        }
        await say(poster, "chat:p1", "one-2")
        await say(poster, "chat:p2", "two-1")
        async with Client(url) as member:
            resumed = member.subscribe("/room", {"rooms": ["chat:p1", "chat:p2"]}, since=positions)
            assert resumed.positions == positions  # it starts from since
            async with resumed as stream:
                missed = await take(stream, 2)
                assert await quiet(stream)
                assert stream.positions == {
                    push.header["room"]: push.header["position"] for push in missed
                }
    assert sorted(push.payload for push in missed) == ["one-2", "two-1"]


async def test_the_client_sees_the_unrecovered_notice() -> None:
    async with (
        serving(chat(("chat:", {"history_size": 100}))) as url,
        Client(url) as member,
        member.subscribe("/room", {"room": "chat:u"}, since={"chat:u": "gone:7"}) as stream,
    ):
        (notice,) = await take(stream, 1)
        assert notice.header == {"notice": "unrecovered", "room": "chat:u"}
        assert stream.positions == {"chat:u": "gone:7"}  # a notice is no position


def test_the_client_checks_since() -> None:
    client = Client("ws://127.0.0.1:1")
    with pytest.raises(TypeError, match="since"):
        client.subscribe("/room", since={"chat:1": 5})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="since"):
        client.subscribe("/room", since="chat:1")  # type: ignore[arg-type]
