"""The fixtures of xraptor's pytest plugin (``xraptor_app``, ``xraptor_client``,
``xraptor_connect``, ``xraptor_antenna``), loaded through the ``pytest11`` entry
point, as in any project where xraptor is installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from xraptor import Handshake, Refuse, Request, Response, XRaptor
from xraptor.antennas import MemoryAntenna
from xraptor.testing import Connect, TestClient

TOKENS = {"alice-token": "alice", "bob-token": "bob"}


def test_the_plugin_is_loaded_by_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("xraptor")
    assert plugin is not None, "reinstall xraptor (pip install -e .) to register its pytest11"
    assert plugin.__name__ == "xraptor.testing.pytest_plugin"


async def test_the_default_app_serves_the_class_routes(
    xraptor_client: TestClient, xraptor_app: XRaptor, xraptor_antenna: MemoryAntenna
) -> None:
    assert xraptor_client.app is xraptor_app
    assert xraptor_app.antenna is xraptor_antenna
    assert xraptor_antenna.state == "up"
    assert (await xraptor_client.get("/_xraptor/ping")).payload == "pong"


class TestAnAppOfYourOwn:
    @pytest.fixture
    def xraptor_app(self, xraptor_antenna: MemoryAntenna) -> XRaptor:
        app = XRaptor(antenna=xraptor_antenna)

        @app.on_connect
        async def authenticate(handshake: Handshake) -> str:
            user = TOKENS.get(handshake.token or "")
            if user is None:
                raise Refuse(401, "a valid token is required")
            return user

        @app.register("/whoami").as_get
        async def whoami(request: Request) -> Response:
            assert request.connection is not None
            return Response.create(request.request_id, {}, str(request.connection.identity))

        @app.register("/news").as_sub
        async def news(request: Request) -> None:
            await app.get_antenna().post(request.request_id, "subscribed")

        return app

    async def test_clients_come_and_go_and_a_refused_one_stops_nothing(
        self, xraptor_connect: Connect, xraptor_app: XRaptor
    ) -> None:
        with pytest.raises(InvalidStatus) as refused:
            await xraptor_connect()
        assert refused.value.response.status_code == 401
        alice = await xraptor_connect(token="alice-token")
        async with TestClient(xraptor_app, token="bob-token") as bob:
            assert (await bob.get("/whoami")).payload == "bob"
        assert (await alice.get("/whoami")).payload == "alice"
        await alice.close()
        carol = await xraptor_connect(token="alice-token")  # the app is still started
        assert (await carol.get("/whoami")).payload == "alice"

    async def test_the_antenna_reaches_the_streams(
        self, xraptor_connect: Connect, xraptor_antenna: MemoryAntenna
    ) -> None:
        client = await xraptor_connect("/?via=fixture", token="bob-token")
        async with client.subscribe("/news") as stream:
            assert (await anext(stream)).payload == "subscribed"
            await xraptor_antenna.post(stream.request_id, json.dumps({"headline": "hi"}))
            assert json.loads((await anext(stream)).payload) == {"headline": "hi"}


# ----- in another project ----------------------------------------------------------------

A_PROJECT_TEST = """
import pytest
from xraptor import Request, Response, XRaptor

APPS = []


@pytest.fixture
def xraptor_app(xraptor_antenna):
    app = XRaptor(antenna=xraptor_antenna)
    APPS.append(app)

    @app.register("/hello").as_get
    async def hello(request: Request) -> Response:
        return Response.create(request.request_id, {}, "hi")

    return app


@pytest.mark.asyncio
async def test_hello(xraptor_client):
    assert (await xraptor_client.get("/hello")).payload == "hi"


def test_the_app_was_shut_down_after_the_test():
    (app,) = APPS
    assert not app.asgi_app().started
    assert app.antenna.state == "closed"
"""


def run_pytest(folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """pytest in a project of its own (``folder``: no conftest, no configuration)."""
    (folder / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    (folder / "test_app.py").write_text(textwrap.dedent(A_PROJECT_TEST))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *options],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_fixtures_work_in_strict_mode(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, "-o", "asyncio_mode=strict")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


def test_without_pytest_asyncio_the_fixtures_say_what_is_missing(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, "-p", "no:asyncio")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "the xraptor fixtures need the pytest-asyncio plugin" in run.stdout


def test_importing_the_plugin_imports_neither_pytest_asyncio_nor_the_test_client() -> None:
    code = (
        "import sys, xraptor.testing.pytest_plugin\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pytest_asyncio', "
        "'xraptor.testing.', 'xraptor.asgi'))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.strip() == "['xraptor.testing.pytest_plugin']"
