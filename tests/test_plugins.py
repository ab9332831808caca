"""Plugins: discovery through the entry point, selection by name, failures, isolation.

The discovery tests run in subprocesses started with ``python -S`` and a
PYTHONPATH that holds only the core, its three dependencies and whatever plugin
distributions the test pip-installed, so "installed" and "not installed" are real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pluggy
import pytest
import websockets

import xraptor
from xraptor import XRaptor
from xraptor.plugins import Plugins, get_plugins

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
FIXTURE_PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="session")
def deps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with only the core's runtime dependencies (links to the installed ones)."""
    folder = tmp_path_factory.mktemp("deps")
    for module in (websockets, pluggy, orjson):
        source = Path(module.__file__ or "").parent
        (folder / source.name).symlink_to(source, target_is_directory=True)
    return folder


def _pip_install(target: Path, project: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(project),
        ],
        check=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def fake_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("fake-plugin")
    _pip_install(target, FIXTURE_PLUGINS / "xraptor-fake")
    return target


@pytest.fixture(scope="session")
def broken_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two broken plugins: one fails to import, one misspells a hook."""
    target = tmp_path_factory.mktemp("broken-plugin")
    _pip_install(target, FIXTURE_PLUGINS / "xraptor-broken")
    _pip_install(target, FIXTURE_PLUGINS / "xraptor-typo")
    return target


def run_isolated(
    code: str, *path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with no site-packages: only the core and ``path`` are importable."""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(str(p) for p in (CORE, *path)),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


LIST_PLUGINS = "import sys; from xraptor.cli import main; sys.exit(main(['plugins']))"

SERVE_ONCE = """
    import asyncio, json, sys
    import xraptor
    from websockets.asyncio.client import connect

    @xraptor.XRaptor.register("/hello").as_get
    async def hello(request):
        return xraptor.Response.create(request.request_id, {}, "hi from " + xraptor.XRaptor.get_antenna().name)

    async def main():
        server = xraptor.XRaptor("127.0.0.1", 0, antenna=sys.argv[1] if len(sys.argv) > 1 else ANTENNA)
        MIDDLEWARE
        await server.start()
        answers = []
        async with connect(f"ws://127.0.0.1:{server.port}") as ws:
            for route in ROUTES:
                await ws.send(json.dumps({"request_id": route, "payload": "", "header": {}, "route": route, "method": "GET"}))
                answers.append(json.loads(await ws.recv()))
        await server.close()
        print(json.dumps(answers))

    asyncio.run(main())
"""


def serve_once(antenna: str, routes: list[str], middleware: str = "") -> str:
    return (
        textwrap.dedent(SERVE_ONCE)
        .replace("ANTENNA", repr(antenna))
        .replace("ROUTES", repr(routes))
        .replace("MIDDLEWARE", middleware or "pass")
    )


def test_a_third_party_plugin_is_found_listed_and_selected_by_name(
    deps_dir: Path, fake_plugin_dir: Path
) -> None:
    listed = run_isolated(LIST_PLUGINS, deps_dir, fake_plugin_dir)
    assert listed.returncode == 0, listed.stderr
    assert "fake: xraptor-fake 0.1.0" in listed.stdout
    assert "antennas: fake" in listed.stdout and "middlewares: fake-ping" in listed.stdout
    assert "guards: fake-allow-list" in listed.stdout
    assert "memory: xraptor (built-in)" in listed.stdout

    code = serve_once(
        "fake",
        ["/hello", "/fake-ping"],
        'xraptor.XRaptor.use_middleware("fake-ping", priority=1, answer="pong!")',
    )
    result = run_isolated(code, deps_dir, fake_plugin_dir)
    assert result.returncode == 0, result.stderr
    hello, ping = json.loads(result.stdout)
    assert hello["payload"] == "hi from fake"
    assert ping["payload"] == "pong!" and ping["method"] == "GET"
    assert ping["header"] == {"started": "fake"}  # the startup hook's awaitable was awaited


GUARDED = """
    import asyncio, json
    import xraptor
    from websockets.exceptions import InvalidStatus

    @xraptor.XRaptor.register("/whoami").as_get
    async def whoami(request):
        return xraptor.Response.create(request.request_id, {}, str(request.connection.identity))

    async def main():
        server = xraptor.XRaptor("127.0.0.1", 0)
        server.use_guard("fake-allow-list", tokens={"t-1": "dana"})
        await server.start()
        url = f"ws://127.0.0.1:{server.port}"
        async with xraptor.Client(url, token="t-1") as client:
            identity = (await client.get("/whoami")).payload
        try:
            await xraptor.Client(url, token="t-2").connect()
        except InvalidStatus as refused:
            status = refused.response.status_code
        await server.close()
        print(json.dumps([identity, status]))

    asyncio.run(main())
"""


def test_a_plugin_guard_is_enabled_by_name(deps_dir: Path, fake_plugin_dir: Path) -> None:
    result = run_isolated(GUARDED, deps_dir, fake_plugin_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["dana", 401]


def test_installing_a_plugin_changes_nothing_by_itself(
    deps_dir: Path, fake_plugin_dir: Path
) -> None:
    result = run_isolated(serve_once("memory", ["/fake-ping"]), deps_dir, fake_plugin_dir)
    assert result.returncode == 0, result.stderr
    (answer,) = json.loads(result.stdout)
    assert json.loads(answer["payload"])["code"] == "unknown_route"


def test_a_broken_plugin_is_logged_and_does_not_stop_others(
    deps_dir: Path, fake_plugin_dir: Path, broken_plugin_dir: Path
) -> None:
    listed = run_isolated(LIST_PLUGINS, deps_dir, fake_plugin_dir, broken_plugin_dir)
    assert listed.returncode == 0, listed.stderr
    assert "could not load xraptor plugin 'broken' from xraptor-broken 0.2.0" in listed.stderr
    assert "ImportError: xraptor_broken needs a module that is not installed" in listed.stderr
    assert "fake: xraptor-fake 0.1.0" in listed.stdout
    assert "broken: xraptor-broken 0.2.0" in listed.stdout and "failed to load" in listed.stdout
    assert "could not load xraptor plugin 'typo' from xraptor-typo 0.3.0" in listed.stderr
    assert "unknown hooks xraptor_register_antenas" in listed.stderr


def test_disabled_plugins_are_not_loaded(
    deps_dir: Path, fake_plugin_dir: Path, broken_plugin_dir: Path
) -> None:
    env = {"XRAPTOR_DISABLE_PLUGINS": "fake, xraptor-broken,typo"}
    listed = run_isolated(LIST_PLUGINS, deps_dir, fake_plugin_dir, broken_plugin_dir, env=env)
    assert listed.returncode == 0, listed.stderr
    assert (
        "fake" not in listed.stdout
        and "broken" not in listed.stdout
        and "could not load" not in listed.stderr
    )
    selected = run_isolated(serve_once("fake", ["/hello"]), deps_dir, fake_plugin_dir, env=env)
    assert selected.returncode != 0
    assert (
        "unknown antenna 'fake'; installed antennas: memory. To add it, pip install xraptor-fake"
        in selected.stderr
    )


def test_the_core_works_with_no_plugin_installed(deps_dir: Path) -> None:
    listed = run_isolated(LIST_PLUGINS, deps_dir)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("memory: xraptor (built-in)")
    assert len([line for line in listed.stdout.splitlines() if not line.startswith(" ")]) == 1
    served = run_isolated(serve_once("memory", ["/hello"]), deps_dir)
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout)[0]["payload"] == "hi from memory"
    for name, package in (("RedisAntenna", "xraptor-redis"), ("NatsAntenna", "xraptor-nats")):
        missing = run_isolated(f"import xraptor.antennas as a; a.{name}", deps_dir)
        assert missing.returncode != 0
        assert f"needs the {package} plugin: pip install {package}" in missing.stderr
    unknown = run_isolated(serve_once("redis", ["/hello"]), deps_dir)
    assert (
        "unknown antenna 'redis'; installed antennas: memory. To add it, pip install xraptor-redis"
        in unknown.stderr
    )
    no_driver = run_isolated(
        "import sys, xraptor; print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'nats')))",
        deps_dir,
    )
    assert no_driver.stdout.strip() == "[]"


# ----- in-process plugin machinery ---------------------------------------------------


class InProcessPlugin:
    def __init__(self) -> None:
        self.events: list[str] = []

    @xraptor.hookimpl
    def xraptor_register_antennas(self, registry: Any) -> None:
        class LoopbackAntenna(xraptor.antennas.MemoryAntenna):
            name = "loopback"

        registry.add(LoopbackAntenna)

    @xraptor.hookimpl
    def xraptor_startup(self, server: XRaptor) -> None:
        self.events.append("startup")

    @xraptor.hookimpl
    def xraptor_shutdown(self, server: XRaptor) -> Any:
        async def later() -> None:
            self.events.append("shutdown")

        return later()


async def test_in_process_plugin_registers_and_unregisters() -> None:
    plugin = InProcessPlugin()
    plugins = get_plugins()
    plugins.register(plugin, "loopback-plugin")
    try:
        assert "loopback" in plugins.antennas.names()
        server = XRaptor("127.0.0.1", 0, antenna="loopback://")
        assert server.antenna.name == "loopback"
        await server.start()
        await server.close()
        assert plugin.events == ["startup", "shutdown"]
    finally:
        plugins.unregister("loopback-plugin")
    assert "loopback" not in plugins.antennas.names()
    with pytest.raises(xraptor.UnknownAntennaError):
        XRaptor("127.0.0.1", 0, antenna="loopback")


def test_misspelled_hooks_are_refused() -> None:
    class Typo:
        @xraptor.hookimpl
        def xraptor_register_antenas(self, registry: Any) -> None:
            pass

    class TakesNothing:
        @xraptor.hookimpl
        def xraptor_register_antennas(self) -> None:
            self.called = True

    plugins = Plugins(discover=False)
    with pytest.raises(pluggy.PluginValidationError, match="xraptor_register_antenas"):
        plugins.register(Typo(), "typo")
    assert plugins.manager.get_plugin("typo") is None and "typo" not in plugins.info
    # an implementation may take fewer arguments than the specification
    fewer = TakesNothing()
    plugins.register(fewer, "fewer")
    assert fewer.called


def test_registry_refuses_bad_antennas() -> None:
    plugins = Plugins(discover=False)

    class Nameless(xraptor.antennas.MemoryAntenna):
        name = ""

    with pytest.raises(ValueError, match="name"):
        plugins.antennas.add(Nameless)
    with pytest.raises(TypeError, match="not a subclass"):
        plugins.antennas.add(dict)  # type: ignore[arg-type]


def test_unknown_middleware_names_what_exists() -> None:
    with pytest.raises(xraptor.UnknownMiddlewareError, match="unknown middleware 'nope'"):
        XRaptor.use_middleware("nope", priority=1)
