"""Listening transports from plugins (``xraptor_register_transports``) and TLS."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidMessage

import xraptor
from core_support import free_port, start_run, wait_for_port
from xraptor import Client, Request, Response, XRaptor
from xraptor.plugins import TransportRegistry, UnknownTransportError, get_plugins
from xraptor.testing.tls import self_signed_cert
from xraptor.transport import Listener, ListenOptions
from xraptor.websocket_transport import listen as websockets_listen


class CountingListener:
    """A transport's listener: websockets' own, with its calls counted."""

    def __init__(self, inner: Listener, calls: list[str]) -> None:
        self.inner = inner
        self.calls = calls

    @property
    def port(self) -> int:
        return self.inner.port

    async def close_connections(self, timeout: float) -> None:
        self.calls.append(f"close_connections({timeout})")
        await self.inner.close_connections(timeout)

    async def wait_closed(self) -> None:
        self.calls.append("wait_closed")
        await self.inner.wait_closed()


class CountingTransport:
    """A third-party transport plugin (registered in process)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.options: list[ListenOptions] = []

    @xraptor.hookimpl
    def xraptor_register_transports(self, registry: TransportRegistry) -> None:
        registry.add("counting", self.listen)

    async def listen(self, app: XRaptor, options: ListenOptions) -> CountingListener:
        self.calls.append("listen")
        self.options.append(options)
        return CountingListener(await websockets_listen(app, options), self.calls)


@pytest.fixture
def counting() -> Iterator[CountingTransport]:
    plugin = CountingTransport()
    get_plugins().register(plugin, "counting-transport", "xraptor-counting")
    try:
        yield plugin
    finally:
        get_plugins().unregister("counting-transport")


def _app(**options: Any) -> XRaptor:
    app = XRaptor("127.0.0.1", 0, **options)

    @app.register("/hello").as_get
    async def hello(request: Request) -> Response:
        return Response.create(request.request_id, {}, "hi", request.method)

    return app


async def test_a_plugin_transport_is_selected_by_name(counting: CountingTransport) -> None:
    app = _app(transport="counting", close_timeout=1.5)
    assert "counting" in get_plugins().transports.names()
    assert get_plugins().info["counting-transport"].transports == ["counting"]
    await app.start()
    try:
        assert counting.calls == ["listen"]
        assert counting.options[0].port == 0 and app.port != 0
        async with Client(f"ws://127.0.0.1:{app.port}") as client:
            assert (await client.get("/hello")).payload == "hi"
    finally:
        await app.close()
    assert counting.calls == ["listen", "close_connections(1.5)", "wait_closed"]


async def test_an_unknown_transport_fails_at_start_and_starts_nothing() -> None:
    app = _app(transport="nope")
    # (a transport plugin may be installed too: xraptor-picows' session)
    with pytest.raises(UnknownTransportError, match=r"installed transports: .*websockets"):
        await app.start()
    assert not app.running
    assert app.antenna.describe()["state"] != "up"  # the antenna was not started


def test_bad_transport_and_ssl_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="transport must be"):
        XRaptor(transport=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"ssl must be an ssl\.SSLContext"):
        XRaptor(ssl="cert.pem")  # type: ignore[arg-type]


def _client_tls(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context


async def test_the_websockets_transport_serves_wss(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    app = _app(ssl=server_tls)
    await app.start()
    try:
        async with Client(f"wss://127.0.0.1:{app.port}", ssl=_client_tls(cert)) as client:
            assert (await client.get("/hello")).payload == "hi"
        # a plain ws:// client does not get through
        with pytest.raises(InvalidMessage):  # the TLS port answers no plain handshake
            async with Client(f"ws://127.0.0.1:{app.port}", timeout=2):
                pass
    finally:
        await app.close()


APP = textwrap.dedent(
    """
    import xraptor

    app = xraptor.XRaptor()


    @app.register("/hello").as_get
    async def hello(request):
        return xraptor.Response.create(request.request_id, {}, "hi over tls")
    """
)


def test_xraptor_run_serves_wss_with_a_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    (tmp_path / "tlsapp.py").write_text(APP)
    port = free_port()
    process = start_run(
        tmp_path,
        "tlsapp:app",
        "--port",
        str(port),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
    )
    try:
        wait_for_port(port, process)

        async def ask() -> str:
            async with Client(f"wss://127.0.0.1:{port}", ssl=_client_tls(cert)) as client:
                return (await client.get("/hello")).payload

        assert asyncio.run(ask()) == "hi over tls"
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert f"xraptor listening on wss://127.0.0.1:{port}" in output, output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--transport", "nope"], r"unknown transport 'nope'; installed transports: .*websockets"),
        (["--ssl-keyfile", "key.pem"], "--ssl-keyfile needs --ssl-certfile"),
        (["--ssl-certfile", "missing.pem"], "could not load the TLS certificate 'missing.pem'"),
    ],
)
def test_xraptor_run_refuses_bad_transport_flags(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    (tmp_path / "tlsapp.py").write_text(APP)
    result = subprocess.run(
        [sys.executable, "-m", "xraptor.cli", "run", "tlsapp:app", *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_xraptor_plugins_lists_the_transports() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xraptor.cli", "plugins"], capture_output=True, text=True, timeout=30
    )
    assert "websockets: xraptor (built-in)" in result.stdout
    assert "  transports: websockets" in result.stdout
