"""Connect guards and tokens: a real server, the Python client, raw upgrades."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from handshake_support import raw_get
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

import xraptor
from core_support import TRANSPORT, ServerFactory
from xraptor import Client, Handshake, Refuse, Request, Response, XRaptor
from xraptor.handshake import encode_token_subprotocol
from xraptor.plugins import get_plugins

TOKENS = {"s3cret-alice-token": "alice", "s3cret-bob-token": "bob"}


def whoami_route() -> list[str]:
    """Register GET /whoami, which answers its connection's identity; returns the calls."""
    calls: list[str] = []

    @XRaptor.register("/whoami").as_get
    async def whoami(request: Request) -> Response:
        assert request.connection is not None
        calls.append(request.request_id)
        return Response.create(request.request_id, {}, repr(request.connection.identity))

    return calls


async def token_guard(handshake: Handshake) -> str:
    user = TOKENS.get(handshake.token or "")
    if user is None:
        raise Refuse(401, "a valid token is required")
    return user


async def test_a_valid_token_authenticates_and_handlers_see_the_identity(
    make_server: ServerFactory,
) -> None:
    whoami_route()
    XRaptor.on_connect(token_guard)
    server = await make_server()
    async with Client(f"ws://127.0.0.1:{server.port}", token="s3cret-alice-token") as client:
        assert (await client.get("/whoami")).payload == "'alice'"


async def test_a_refusal_is_an_http_401_before_the_upgrade(make_server: ServerFactory) -> None:
    calls = whoami_route()
    assert XRaptor.on_connect(token_guard) is token_guard  # a bare decorator
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}"
    for client in (Client(url), Client(url, token="wrong")):
        with pytest.raises(InvalidStatus) as refused:
            await client.connect()
        assert refused.value.response.status_code == 401
        assert refused.value.response.body == b"a valid token is required\n"
        assert refused.value.response.headers["WWW-Authenticate"] == "Bearer"
    assert server.metrics.connections_total == 0  # no WebSocket was opened
    assert calls == []


async def test_guards_chain_identities_in_order_class_first(make_server: ServerFactory) -> None:
    whoami_route()
    seen: list[tuple[str, object]] = []

    @XRaptor.on_connect
    async def first(handshake: Handshake) -> str:
        seen.append(("first", handshake.identity))
        return "user"

    server = XRaptor("127.0.0.1", 0)
    other = XRaptor("127.0.0.1", 0)

    @server.on_connect
    async def app_guard(handshake: Handshake) -> dict[str, str]:
        seen.append(("app", handshake.identity))
        return {"user": str(handshake.identity), "role": "admin"}

    @server.on_connect
    async def keeps(handshake: Handshake) -> None:  # None keeps the identity
        seen.append(("keeps", handshake.identity))

    @XRaptor.on_connect  # registered after the app's, still runs before them
    async def second(handshake: Handshake) -> None:
        seen.append(("second", handshake.identity))

    assert [name for name, _ in server.guards()] == [
        first.__qualname__,
        second.__qualname__,
        app_guard.__qualname__,
        keeps.__qualname__,
    ]
    assert len(other.guards()) == 2  # an app's guards are its own
    await server.start()
    try:
        async with Client(f"ws://127.0.0.1:{server.port}") as client:
            reply = await client.get("/whoami")
    finally:
        await server.close()
    assert reply.payload == repr({"user": "user", "role": "admin"})
    assert seen == [
        ("first", None),
        ("second", "user"),
        ("app", "user"),
        ("keeps", {"user": "user", "role": "admin"}),
    ]


async def test_without_guards_the_identity_is_none(make_server: ServerFactory) -> None:
    whoami_route()
    server = await make_server()
    async with Client(f"ws://127.0.0.1:{server.port}", token="ignored") as client:
        assert (await client.get("/whoami")).payload == "None"


async def test_middlewares_see_the_identity_on_their_connection(
    make_server: ServerFactory,
) -> None:
    whoami_route()
    XRaptor.on_connect(token_guard)

    @XRaptor.middleware(1)
    async def admins_only(request: Request, connection: xraptor.Connection) -> Response | None:
        if connection.identity != "alice":
            return xraptor.error_response("forbidden", "alice only", request)
        return None

    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}"
    async with Client(url, token="s3cret-alice-token") as alice:
        assert (await alice.get("/whoami")).payload == "'alice'"
    async with Client(url, token="s3cret-bob-token") as bob:
        with pytest.raises(xraptor.ClientError) as refused:
            await bob.get("/whoami")
        assert refused.value.code == "forbidden"


@pytest.mark.parametrize("status", [403, 429, 503, 499])
async def test_refuse_answers_any_error_status_with_its_headers(
    make_server: ServerFactory, status: int
) -> None:
    @XRaptor.on_connect
    async def busy(handshake: Handshake) -> None:
        raise Refuse(status, "come back later", headers={"Retry-After": "7"})

    server = await make_server()
    answer = await raw_get(server.port)
    assert (answer.status, answer.body) == (status, "come back later\n")
    assert answer.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, ValueError),
        (302, ValueError),
        (600, ValueError),
        ("401", TypeError),
        (True, TypeError),
    ],
)
def test_refuse_validates_its_status(status: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="status"):
        Refuse(status, "no")


async def test_a_failing_guard_is_a_500_and_its_log_hides_the_token(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    @XRaptor.on_connect
    async def broken(handshake: Handshake) -> None:
        raise RuntimeError(f"database down while checking {handshake.token}")

    server = await make_server()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InvalidStatus) as refused:
        await Client(f"ws://127.0.0.1:{server.port}", token="s3cret-alice-token").connect()
    assert refused.value.response.status_code == 500
    assert "RuntimeError: database down while checking [redacted]" in caplog.text
    assert "guard" in caplog.text and "broken" in caplog.text
    assert "s3cret-alice-token" not in caplog.text


async def test_other_credentials_quoted_by_a_guard_stay_out_of_the_logs(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    @XRaptor.on_connect
    async def picky(handshake: Handshake) -> None:
        key = handshake.headers.get("X-Api-Key")
        proxy = handshake.headers.get("Proxy-Authorization")
        query = handshake.query.get("api_token")
        if handshake.path == "/refuse":
            raise Refuse(403, f"key {key} and {query} are not allowed")
        raise LookupError(f"unknown key {key}, proxy {proxy}, query {query}")

    server = await make_server()
    caplog.set_level(logging.DEBUG)
    headers = [("X-Api-Key", "SECRET-HEADER-KEY"), ("Proxy-Authorization", "SECRET-PROXY")]
    for path in ("/?api_token=SECRET-QUERY-KEY", "/refuse?api_token=SECRET-QUERY-KEY"):
        answer = await raw_get(server.port, path, headers=headers)
        assert answer.status in (500, 403)
    for secret in ("SECRET-HEADER-KEY", "SECRET-PROXY", "SECRET-QUERY-KEY"):
        assert secret not in caplog.text, secret
    assert "LookupError: unknown key [redacted]" in caplog.text


async def test_headers_query_cookies_and_origin_reach_the_guard(
    make_server: ServerFactory,
) -> None:
    seen: list[Handshake] = []

    @XRaptor.on_connect
    async def look(handshake: Handshake) -> None:
        seen.append(handshake)

    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}/room/7?name=al%20ice&name=bob&empty="
    headers = {"X-Api-Key": "k1", "Cookie": 'session=abc; theme="dark"'}
    async with Client(url, headers=headers):
        pass
    (handshake,) = seen
    assert handshake.path == "/room/7"
    assert handshake.query == {"name": "al ice", "empty": ""}
    assert handshake.headers.get("x-api-key") == "k1" and handshake.headers["X-API-KEY"] == "k1"
    assert handshake.cookies == {"session": "abc", "theme": "dark"}
    assert handshake.remote_ip == "127.0.0.1"
    assert handshake.origin is None and handshake.token is None
    assert "abc" not in repr(handshake) and "k1" not in repr(handshake)


async def test_the_browser_subprotocol_carries_the_token(make_server: ServerFactory) -> None:
    whoami_route()
    XRaptor.on_connect(token_guard)
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}"
    offered = [Subprotocol("xraptor"), Subprotocol(encode_token_subprotocol("s3cret-bob-token"))]
    async with connect(url, subprotocols=offered) as ws:
        assert ws.subprotocol == "xraptor"  # browsers need an offered one in the answer
        await ws.send(
            '{"request_id":"1","payload":"","header":{},"route":"/whoami","method":"GET"}'
        )
        assert '"payload":"\'bob\'"' in str(await ws.recv())


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([("Sec-WebSocket-Protocol", "xraptor, xraptor.bearer.a+b/c=")], "base64url"),
        ([("Sec-WebSocket-Protocol", "xraptor, xraptor.bearer.YQ, xraptor.bearer.Yg")], "more"),
        (
            [
                ("Sec-WebSocket-Protocol", f"xraptor, {encode_token_subprotocol('one')}"),
                ("Authorization", "Bearer two"),
            ],
            "different tokens",
        ),
        ([("Authorization", "Bearer ")], "empty bearer token"),
        ([("Authorization", "Bearer a"), ("Authorization", "Bearer a")], "more than one"),
    ],
)
async def test_ambiguous_or_malformed_tokens_are_a_400(
    make_server: ServerFactory, headers: list[tuple[str, str]], message: str
) -> None:
    server = await make_server()
    answer = await raw_get(server.port, headers=headers)
    assert answer.status == 400, answer
    assert message in answer.body


async def test_clients_offering_no_or_other_subprotocols_keep_working(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}"
    async with connect(url) as plain:
        assert plain.subprotocol is None
    async with connect(url, subprotocols=[Subprotocol("chat")]) as other:
        assert other.subprotocol is None


def test_the_client_validates_its_token() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Client("ws://127.0.0.1:1", token="")
    with pytest.raises(ValueError, match="non-empty"):
        Client("ws://127.0.0.1:1", token="two words")
    with pytest.raises(ValueError, match="not both"):
        Client("ws://127.0.0.1:1", token="t", headers={"authorization": "Basic eA=="})


# ----- no token in any log ----------------------------------------------------------------


@pytest.fixture
def all_logs() -> Iterator[list[str]]:
    """Every record of every logger at DEBUG, formatted with its traceback."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "websockets", "xraptor")}
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def test_tokens_never_reach_the_logs(make_server: ServerFactory, all_logs: list[str]) -> None:
    whoami_route()
    XRaptor.on_connect(token_guard)
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}/?room=1&token=s3cret-in-the-query"
    async with Client(
        url, token="s3cret-alice-token", headers={"Cookie": "sid=s3cret-cookie"}
    ) as c:
        assert (await c.get("/whoami")).payload == "'alice'"
    bearer = encode_token_subprotocol("s3cret-bob-token")
    # what a browser sends; the browser's own log is not the server's
    browser_log = logging.getLogger("test.browser")
    offered = [Subprotocol("xraptor"), Subprotocol(bearer)]
    async with connect(url, subprotocols=offered, logger=browser_log) as ws:
        await ws.send(
            '{"request_id":"1","payload":"","header":{},"route":"/whoami","method":"GET"}'
        )
        await ws.recv()
    with pytest.raises(InvalidStatus):  # refused, and a malformed subprotocol header
        await Client(url, token="s3cret-wrong-token").connect()
    # a header websockets cannot parse: it logs the error, which quotes the header
    await raw_get(server.port, headers=[("Sec-WebSocket-Protocol", f"x y, {bearer}")])
    await asyncio.sleep(0.1)
    text = "\n".join(line for line in all_logs if not line.startswith("test.browser "))
    # the capture works: websockets logged the handshakes' headers at DEBUG (the
    # client's always; the server's on the websockets transport, where it logs them)
    assert "> Authorization: [redacted]" in text
    if TRANSPORT == "websockets":
        assert "< Authorization: [redacted]" in text
        assert "< Cookie: [redacted]" in text
        assert "xraptor.bearer.[redacted]" in text
        assert "invalid Sec-WebSocket-Protocol header" in text
    for secret in ("s3cret", bearer.removeprefix("xraptor.bearer.")):
        assert secret not in text, [line for line in text.splitlines() if secret in line]


# ----- guards offered by plugins ------------------------------------------------------------


class GuardPlugin:
    @xraptor.hookimpl
    def xraptor_register_guards(self, registry: Any) -> None:
        def factory(header: str, users: dict[str, str]) -> Any:
            async def api_key(handshake: Handshake) -> str:
                user = users.get(handshake.headers.get(header, ""))
                if user is None:
                    raise Refuse(403, f"a valid {header} header is required")
                return user

            return api_key

        registry.add("api-key", factory)


@pytest.fixture
def guard_plugin() -> Iterator[None]:
    plugins = get_plugins()
    plugins.register(GuardPlugin(), "guard-plugin")
    yield
    plugins.unregister("guard-plugin")
    assert "api-key" not in plugins.guards.names()


async def test_a_plugin_guard_is_enabled_by_name(
    guard_plugin: None, make_server: ServerFactory
) -> None:
    whoami_route()
    assert get_plugins().info["guard-plugin"].guards == ["api-key"]
    server = XRaptor("127.0.0.1", 0)
    server.use_guard("api-key", header="X-Api-Key", users={"k-1": "carol"})
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    try:
        async with Client(url, headers={"X-Api-Key": "k-1"}) as client:
            assert (await client.get("/whoami")).payload == "'carol'"
        with pytest.raises(InvalidStatus) as refused:
            await Client(url, headers={"X-Api-Key": "nope"}).connect()
        assert refused.value.response.status_code == 403
    finally:
        await server.close()
    # enabled on the class, it guards every server
    XRaptor.use_guard("api-key", header="X-Other", users={})
    assert [name for name, _ in XRaptor("127.0.0.1", 0).guards()] == ["api-key"]


def test_an_unknown_guard_names_what_exists(guard_plugin: None) -> None:
    with pytest.raises(xraptor.UnknownGuardError, match=r"unknown guard 'nope'.*api-key"):
        XRaptor.use_guard("nope")


def test_the_guard_registry_refuses_bad_entries() -> None:
    registry = get_plugins().guards
    with pytest.raises(ValueError, match="non-empty"):
        registry.add("", lambda: None)
    with pytest.raises(TypeError, match="not callable"):
        registry.add("x", "not a factory")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async function"):
        XRaptor.on_connect("not a guard")  # type: ignore[type-var]
