"""Room presence and join / leave notices (issue 12 part 5), on the memory antenna,
against a real server and real clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_history import PlainAntenna, serving

from xraptor import Broadcast, Client, ClientError, Handshake, XRaptor
from xraptor.antenna import PresenceNotSupported
from xraptor.antennas import MemoryAntenna
from xraptor.client import Stream
from xraptor.presence import MAX_CLIENT_INFO, NOTICES, PresenceNotEnabled
from xraptor.testing import eventually
from xraptor.testing.presence_server import next_notice, presence_app, who


def app_with(*rooms: tuple[str, dict[str, Any]], antenna: object = "memory") -> XRaptor:
    return presence_app(antenna, rooms=rooms)


async def notices(stream: Stream, count: int) -> list[tuple[str, dict[str, Any]]]:
    return [await next_notice(stream) for _ in range(count)]


async def quiet(stream: Stream, seconds: float = 0.3) -> None:
    try:
        push = await asyncio.wait_for(anext(stream), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected push: {push!r}")


async def test_presence_lists_members_with_what_they_share_and_forgets_leavers() -> None:
    app = app_with(("lobby", {"presence": True}))
    async with serving(app) as url, Client(url) as alice, Client(url) as bob, Client(url) as asker:
        async with alice.subscribe("/room", {"room": "lobby"}, {"presence": {"name": "alice"}}):
            async with bob.subscribe("/room", {"room": "lobby"}) as bobs:
                members = await who(asker, "lobby")
                assert sorted(members.values(), key=str) == [None, {"name": "alice"}]
                # keys are "<connection id>:<request id>": unique, and the stream id is in them
                assert any(key.endswith(f":{bobs.request_id}") for key in members)
                assert len({key.partition(":")[0] for key in members}) == 2
            assert await eventually(lambda: _present(asker, "lobby", [{"name": "alice"}]))
        assert await eventually(lambda: _present(asker, "lobby", []))


async def _present(client: Client, room: str, infos: list[Any]) -> bool:
    return list((await who(client, room)).values()) == infos


async def test_a_disconnect_removes_its_members() -> None:
    app = app_with(("lobby", {"presence": True}))
    async with serving(app) as url, Client(url) as asker:
        leaver = Client(url)
        await leaver.__aenter__()
        async with leaver.subscribe("/room", {"room": "lobby"}):
            assert len(await who(asker, "lobby")) == 1
            await leaver.close()
            assert await eventually(lambda: _present(asker, "lobby", []))


async def test_the_connections_identity_is_what_presence_shares() -> None:
    app = app_with(("lobby", {"presence": True}))

    @app.on_connect
    async def guard(handshake: Handshake) -> dict[str, str]:
        return {"user": handshake.headers.get("X-User", "anonymous")}

    async with (
        serving(app) as url,
        Client(url, headers={"X-User": "carol"}) as carol,
        # the identity wins over what the client claims
        carol.subscribe("/room", {"room": "lobby"}, {"presence": {"user": "root"}}),
    ):
        assert list((await who(carol, "lobby")).values()) == [{"user": "carol"}]


async def test_an_identity_that_is_not_json_refuses_the_sub_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_with(("lobby", {"presence": True}))

    @app.on_connect
    async def guard(handshake: Handshake) -> object:
        return object()

    async with serving(app) as url, Client(url) as client:
        with pytest.raises(ClientError) as refused:
            async with client.subscribe("/room", {"room": "lobby"}):
                pass
        assert refused.value.code == "handler_error"
        assert await who(client, "lobby") == {}
    assert "JSON-serialisable" in caplog.text


@pytest.mark.parametrize(
    "shared",
    [["a list"], "text", 7, {"long": "x" * MAX_CLIENT_INFO}],
    ids=["list", "str", "int", "too-large"],
)
async def test_bad_presence_headers_are_refused(shared: object) -> None:
    app = app_with(("lobby", {"presence": True}))
    async with serving(app) as url, Client(url) as client:
        with pytest.raises(ClientError) as refused:
            async with client.subscribe("/room", {"room": "lobby"}, {"presence": shared}):
                pass
        assert refused.value.code == "invalid_field"
        assert "presence" in str(refused.value)
        async with client.subscribe("/room", {"room": "lobby"}, {"presence": {"ok": 1}}):
            assert list((await who(client, "lobby")).values()) == [{"ok": 1}]


async def test_join_and_leave_notices_reach_the_members() -> None:
    app = app_with(("lobby", {"presence": True, "join_leave": True}))
    async with (
        serving(app) as url,
        Client(url) as alice,
        Client(url) as bob,
        alice.subscribe("/room", {"room": "lobby"}, {"presence": {"n": "a"}}) as mine,
    ):
        [(kind, payload)] = await notices(mine, 1)  # its own join
        assert kind == "join" and payload["info"] == {"n": "a"}
        async with bob.subscribe("/room", {"room": "lobby"}, {"presence": {"n": "b"}}) as his:
            [(kind, joined)] = await notices(mine, 1)
            assert kind == "join" and joined["info"] == {"n": "b"}
            assert joined["member"].endswith(f":{his.request_id}")
            assert joined["member"] in await who(alice, "lobby")
            [(kind, _)] = await notices(his, 1)
            assert kind == "join"
        [(kind, left)] = await notices(mine, 1)
        assert (kind, left) == ("leave", joined)
        await quiet(mine)


async def test_no_notices_without_join_leave_and_no_presence_without_presence() -> None:
    app = app_with(("lobby", {"presence": True}), ("plain", {"history_size": 5}))
    async with serving(app) as url, Client(url) as alice, Client(url) as bob:
        async with (
            alice.subscribe("/room", {"room": "lobby"}) as mine,
            bob.subscribe("/room", {"room": "lobby"}),
        ):
            await quiet(mine)
        with pytest.raises(ClientError) as refused:
            await who(alice, "plain")
        assert refused.value.code == "handler_error"
    with pytest.raises(PresenceNotEnabled, match="configure_rooms"):
        await Broadcast("plain", MemoryAntenna(), app).presence()


async def test_rooms_without_presence_open_no_notice_channel() -> None:
    app = app_with(("lobby", {"presence": True, "join_leave": True}))
    antenna = app.get_antenna()
    async with serving(app) as url, Client(url) as alice:
        async with alice.subscribe("/room", {"room": "elsewhere"}):
            assert not any(ch.startswith(NOTICES) for ch in antenna.watched_channels())
        async with alice.subscribe("/room", {"room": "lobby"}):
            assert NOTICES + "lobby" in antenna.watched_channels()
        assert await eventually(lambda: _unwatched(antenna), timeout=5)


async def _unwatched(antenna: Any) -> bool:
    return not any(ch.startswith(NOTICES) for ch in antenna.watched_channels())


async def test_members_of_a_process_that_stops_refreshing_expire_and_leave() -> None:
    """Two apps on one memory bus stand for two processes: one whose refresh stops
    (a process killed) loses its members within presence_ttl, and the other announces
    their leave; the live one keeps its own."""
    first = presence_app(MemoryAntenna(presence_ttl=0.6))
    second = presence_app(MemoryAntenna(presence_ttl=0.6))
    room = {"room": "notices:lobby"}
    async with (
        serving(first) as one,
        serving(second) as two,
        Client(one) as a,
        Client(two) as b,
        b.subscribe("/room", room, {"presence": {"p": 2}}) as survivor,
        a.subscribe("/room", room, {"presence": {"p": 1}}),
    ):
        assert [(k, p["info"]) for k, p in await notices(survivor, 2)] == [
            ("join", {"p": 2}),
            ("join", {"p": 1}),
        ]
        assert sorted(m["p"] for m in (await who(b, "notices:lobby")).values()) == [1, 2]
        refresher = first.presence_tracker._refresher
        assert refresher is not None
        refresher.cancel()  # the first process "dies": it sets its members no more
        [(kind, left)] = await notices(survivor, 1)
        assert kind == "leave" and left["info"] == {"p": 1}
        assert [m["p"] for m in (await who(b, "notices:lobby")).values()] == [2]
        await quiet(survivor, 0.5)  # announced once


async def test_an_antenna_without_presence_is_refused_at_start() -> None:
    app = presence_app(PlainAntenna())
    with pytest.raises(PresenceNotSupported, match="cannot keep presence"):
        await app.start()
    await app.close()


def test_presence_ttl_must_be_a_positive_number() -> None:
    for bad in (0, -1, "30", float("inf"), True):
        with pytest.raises(ValueError, match="presence_ttl"):
            MemoryAntenna(presence_ttl=bad)
    assert MemoryAntenna().presence_ttl == 30.0


async def test_notices_reach_members_when_every_channel_keeps_history() -> None:
    """A history pattern that matches every channel matches the notices' channel too:
    they are still pushed as notices (without a position), and room messages as before."""
    app = app_with(
        (r".", {"history_size": 10}),
        ("lobby", {"history_size": 10, "presence": True, "join_leave": True}),
    )
    async with (
        serving(app) as url,
        Client(url) as alice,
        alice.subscribe("/room", {"room": "lobby"}, {"presence": {"n": "a"}}) as mine,
    ):
        [(kind, payload)] = await notices(mine, 1)
        assert kind == "join" and payload["info"] == {"n": "a"}
        await app.get_antenna().post("lobby", "hello")
        push = await asyncio.wait_for(anext(mine), 5)
        assert push.payload == "hello" and push.header["position"]
