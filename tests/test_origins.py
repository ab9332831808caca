"""The Origin policy: a real server, upgrades from a raw HTTP client and websockets' client."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from handshake_support import raw_get
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from core_support import ServerFactory
from xraptor import XRaptor
from xraptor.origins import OriginPolicy


def _refused_for_another_origin(answer: Any) -> None:
    assert answer.status == 403, answer
    assert answer.body.startswith("Forbidden: cross-origin WebSocket refused")


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (None, None),  # a non-browser client
        ("http://127.0.0.1:{port}", None),
        ("HTTP://127.0.0.1:{port}", None),  # scheme and host are case-insensitive
        ("http://App.Example", "app.example"),  # default port 80 on both sides
        ("http://app.example:80", "app.example"),
        ("https://app.example", "app.example"),  # 443 behind a TLS proxy: Host has no port
        ("https://app.example", "APP.example:443"),
        ("http://[::1]:{port}", "[::1]:{port}"),
        ("http://[0:0::1]:{port}", "[::1]:{port}"),  # the same IPv6 address, written longer
    ],
)
async def test_same_origin_and_no_origin_are_accepted_by_default(
    make_server: ServerFactory, origin: str | None, host: str | None
) -> None:
    server = await make_server()
    port = server.port
    headers = [("Origin", origin.format(port=port))] if origin else []
    answer = await raw_get(port, headers=headers, host=host.format(port=port) if host else None)
    assert answer.status == 101, answer
    assert answer.headers["upgrade"] == "websocket"


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", None),
        ("null", None),
        ("http://127.0.0.1:{other}", None),  # the same host on another port
        ("http://localhost:{port}", None),  # another name for the same machine
        ("http://app.example.evil.com", "app.example"),  # a look-alike
        ("http://evil-app.example", "app.example"),
        ("http://app.example:8080", "app.example"),
        ("https://app.example:80", "app.example"),  # 80 is not https's default port
        ("http://127.0.0.1:{port}/page", None),  # not an origin
        ("http://127.0.0.1:{port}@evil.com", None),
        ("127.0.0.1:{port}", None),
        ("", None),
    ],
)
async def test_other_origins_are_refused_with_403_before_the_upgrade(
    make_server: ServerFactory, origin: str, host: str | None
) -> None:
    server = await make_server()
    port = server.port
    headers = [("Origin", origin.format(port=port, other=port + 1))]
    answer = await raw_get(port, headers=headers, host=host)
    _refused_for_another_origin(answer)
    assert "upgrade" not in answer.headers
    assert server.metrics.connections_total == 0  # no WebSocket was opened


async def test_two_origin_headers_are_refused(make_server: ServerFactory) -> None:
    server = await make_server()
    same = f"http://127.0.0.1:{server.port}"
    answer = await raw_get(server.port, headers=[("Origin", same), ("Origin", same)])
    _refused_for_another_origin(answer)
    assert "more than one Origin header" in answer.body


async def test_a_refusal_logs_one_line_that_says_how_to_allow_it(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()
    caplog.set_level(logging.INFO, logger="xraptor")
    await raw_get(server.port, headers=[("Origin", "https://evil.example")])
    lines = [r.getMessage() for r in caplog.records if r.name == "xraptor.admission"]
    assert len(lines) == 1
    assert "'https://evil.example'" in lines[0]
    for advice in ("origins=[...]", "--origin", "XRAPTOR_ORIGINS"):
        assert advice in lines[0]


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://app.example", 101),
        ("https://APP.example:443", 101),
        ("https://app.example/", 101),
        ("http://localhost:8000", 101),
        (None, 101),
        ("http://app.example", 403),  # http is not https
        ("https://app.example:8443", 403),
        ("https://app.example.evil.com", 403),
        ("http://127.0.0.1:{port}", 403),  # a list allows exactly what it lists
        ("null", 403),
    ],
)
async def test_a_list_allows_exactly_those_origins(
    make_server: ServerFactory, origin: str | None, status: int
) -> None:
    server = await make_server(
        origins=["https://app.example/", "http://LOCALHOST:8000", "https://other.example:8443/"]
    )
    server.set_origins(["https://app.example/", "http://LOCALHOST:8000"])
    headers = [("Origin", origin.format(port=server.port))] if origin else []
    answer = await raw_get(server.port, headers=headers)
    assert answer.status == status, answer


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://127.0.0.1:1", "chrome-extension://abc"]
)
async def test_star_allows_every_origin(make_server: ServerFactory, origin: str) -> None:
    server = await make_server(origins=["*"])
    answer = await raw_get(server.port, headers=[("Origin", origin)])
    assert answer.status == 101, answer


async def test_websockets_client_sees_403_for_another_origin(make_server: ServerFactory) -> None:
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}"
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, origin=Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    async with connect(url, origin=Origin(f"http://127.0.0.1:{server.port}")) as ws:
        assert ws.response is not None and ws.response.status_code == 101


async def test_plain_http_gets_are_not_refused(make_server: ServerFactory) -> None:
    server = await make_server()
    for path in ("/health", "/metrics", "/_xraptor/client.js"):
        answer = await raw_get(
            server.port, path, [("Origin", "https://evil.example")], upgrade=False
        )
        assert answer.status == 200, (path, answer)
    # a plain GET of another path is told to upgrade, as before (not a 403)
    answer = await raw_get(server.port, "/", [("Origin", "https://evil.example")], upgrade=False)
    assert answer.status == 426


@pytest.mark.parametrize(
    ("origins", "error", "message"),
    [
        ("https://app.example", TypeError, "not the single string"),
        ([42], TypeError, "must hold strings"),
        (["*", "https://app.example"], ValueError, "give '\\*' alone"),
        (["null"], ValueError, "cannot allow 'null'"),
        (["app.example"], ValueError, "invalid entry in origins: 'app.example' is not an origin"),
        (["https://app.example/path"], ValueError, "has a path"),
        (["https://app.example:99999"], ValueError, "invalid entry in origins"),
        (["https://user@app.example"], ValueError, "user info"),
    ],
)
def test_a_bad_setting_is_a_clear_error_at_construction(
    origins: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        XRaptor("127.0.0.1", 0, origins=origins)


def test_the_policy_describes_itself() -> None:
    assert OriginPolicy().describe() == "same-origin pages only"
    assert OriginPolicy(["*"]).describe() == "every origin"
    assert OriginPolicy([]).describe() == "no browser page"
    listed = OriginPolicy(["https://b.example:443", "http://[::1]:8000"]).describe()
    assert listed == "http://[::1]:8000, https://b.example"


async def test_a_flood_of_refused_upgrades_is_counted_and_logged_sparingly(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()
    with caplog.at_level(logging.INFO):
        for _ in range(200):
            answer = await raw_get(server.port, headers=[("Origin", "https://evil.example")])
            assert answer.status == 403
    refusals = [r for r in caplog.records if "refused a WebSocket upgrade" in r.getMessage()]
    assert 1 <= len(refusals) <= 2  # one sample line per 5 s at INFO; the rest at DEBUG
    assert "XRAPTOR_ORIGINS" in refusals[0].getMessage()
    assert server.metrics.handshake_refusals_total == 200
    assert "xraptor_handshake_refusals_total 200" in server.metrics.prometheus()


async def test_an_internationalised_origin_in_the_list_matches_its_punycode(
    make_server: ServerFactory,
) -> None:
    server = await make_server(origins=["https://bücher.example"])
    answer = await raw_get(server.port, headers=[("Origin", "https://xn--bcher-kva.example")])
    assert answer.status == 101
    with pytest.raises(ValueError, match="origins"):
        OriginPolicy(["https://bad\u2028host.example"])
