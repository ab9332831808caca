"""Plugins: discovery through the entry point, selection by name, failures, isolation.

The discovery tests run in subprocesses started with ``python -S`` and a
PYTHONPATH that holds only the core, its three dependencies and whatever plugin
distributions the test pip-installed, so "installed" and "not installed" are real.
"""

from __future__ import annotations

import json
import logging
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
def postgres_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third-party antenna named "postgres" that declares postgres:// and postgresql://."""
    target = tmp_path_factory.mktemp("postgres-plugin")
    _pip_install(target, FIXTURE_PLUGINS / "acme-xraptor-pg")
    return target


@pytest.fixture(scope="session")
def broken_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two broken plugins: one fails to import, one misspells a hook."""
    target = tmp_path_factory.mktemp("broken-plugin")
    _pip_install(target, FIXTURE_PLUGINS / "xraptor-broken")
    _pip_install(target, FIXTURE_PLUGINS / "xraptor-typo")
    return target


def run_isolated(
    code: str, *path: Path, env: dict[str, str] | None = None, args: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (with ``args`` in ``sys.argv``) with no site-packages: only the core
    and ``path`` are importable."""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(str(p) for p in (CORE, *path)),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(code), *(args or [])],
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


SELECT_BY_URL = """
    import sys
    from xraptor.plugins import resolve_antenna

    for url in sys.argv[1:]:
        antenna = resolve_antenna(url)
        print(antenna.name, antenna.options.get("dsn"))
"""


def test_a_third_party_antenna_is_selected_by_the_url_schemes_it_declares(
    deps_dir: Path, postgres_plugin_dir: Path, fake_plugin_dir: Path
) -> None:
    listed = run_isolated(LIST_PLUGINS, deps_dir, postgres_plugin_dir, fake_plugin_dir)
    assert listed.returncode == 0, listed.stderr
    assert "postgres: acme-xraptor-pg 0.4.0" in listed.stdout
    assert "  schemes: postgres://, postgresql://" in listed.stdout
    assert "  schemes: fake://" in listed.stdout  # the default: the antenna's name
    assert "  schemes: memory://" in listed.stdout

    urls = ["postgresql://app@db.example/chat", "POSTGRES://db.example/chat", "fake://"]
    selected = run_isolated(
        SELECT_BY_URL, deps_dir, postgres_plugin_dir, fake_plugin_dir, args=urls
    )
    assert selected.returncode == 0, selected.stderr
    assert selected.stdout.splitlines() == [
        "postgres postgresql://app@db.example/chat",  # options_from_url got the whole URL
        "postgres POSTGRES://db.example/chat",  # schemes are case-insensitive
        "fake None",
    ]

    served = run_isolated(
        serve_once("postgresql://app@db.example/chat", ["/hello"]), deps_dir, postgres_plugin_dir
    )
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout)[0]["payload"] == "hi from postgres"


def test_a_url_scheme_no_antenna_claims_names_the_known_schemes(deps_dir: Path) -> None:
    for url in ("rediss://cache.example:6380/0", "postgresql://u:secret@db/app"):
        result = run_isolated(serve_once(url, ["/hello"]), deps_dir)
        assert result.returncode != 0
        scheme = url.split("://")[0]
        assert (
            f"UnknownSchemeError: no installed antenna accepts {scheme}:// URLs; "
            "known schemes: memory://. Install the plugin whose antenna accepts "
            f"{scheme}:// URLs (the first-party plugins are xraptor-redis and xraptor-nats)"
        ) in result.stderr
        assert "secret" not in result.stderr  # the error repeats the scheme, not the URL
        assert "pip install xraptor-" not in result.stderr  # no package name is guessed


def test_the_core_works_with_no_plugin_installed(deps_dir: Path) -> None:
    listed = run_isolated(LIST_PLUGINS, deps_dir)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("memory: xraptor (built-in)")
    plugins = [line for line in listed.stdout.splitlines() if not line.startswith(" ")]
    assert len(plugins) == 2 and plugins[1].startswith("websockets: xraptor (built-in)")
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


# ----- URL schemes --------------------------------------------------------------------


def test_an_antenna_accepts_its_name_as_scheme_unless_it_declares_schemes() -> None:
    memory = xraptor.antennas.MemoryAntenna

    class Renamed(memory):
        name = "renamed"

    class Declared(memory):
        name = "postgres"
        schemes = ("postgres", "postgresql")

    class Instrumented(Declared):  # neither name nor schemes: both inherited
        pass

    class Fork(Declared):  # a new name without schemes: its own name only
        name = "fork"

    class Unreachable(memory):  # selectable by name only
        name = "by-name-only"
        schemes = ()

    assert memory.schemes == ("memory",) and xraptor.Antenna.schemes == ()
    assert Renamed.schemes == ("renamed",)
    assert Instrumented.schemes == Declared.schemes == ("postgres", "postgresql")
    assert Fork.schemes == ("fork",)

    plugins = Plugins(discover=False)
    for antenna_class in (Renamed, Declared, Fork, Unreachable):
        plugins.antennas.add(antenna_class)
    assert plugins.antennas.schemes() == ["fork", "memory", "postgres", "postgresql", "renamed"]
    assert plugins.antennas.for_scheme("postgresql") is Declared
    assert plugins.antennas.for_scheme("PostgreSQL") is Declared
    assert plugins.antenna_class("by-name-only") is Unreachable
    with pytest.raises(xraptor.UnknownSchemeError) as unknown:
        plugins.antennas.for_scheme("by-name-only")
    assert isinstance(unknown.value, xraptor.UnknownAntennaError | KeyError)
    assert unknown.value.scheme == "by-name-only"
    assert sorted(unknown.value.installed) == plugins.antennas.schemes()
    assert "known schemes: fork://, memory://, postgres://, postgresql://, renamed://." in str(
        unknown.value
    )


def test_a_url_selects_by_its_whole_scheme() -> None:
    class Plain(xraptor.antennas.MemoryAntenna):
        name = "plain"

    class Plus(xraptor.antennas.MemoryAntenna):
        name = "plus"
        schemes = ("plain+tls",)

    plugins = get_plugins()
    plugins.register(_Offering(Plain, Plus), "scheme-plugin")
    try:
        assert XRaptor("127.0.0.1", 0, antenna="plain://").antenna.name == "plain"
        # nothing is cut off or rewritten: "plain+tls" is a scheme of its own
        assert XRaptor("127.0.0.1", 0, antenna="plain+tls://").antenna.name == "plus"
        with pytest.raises(xraptor.UnknownSchemeError, match="plain\\+other://"):
            XRaptor("127.0.0.1", 0, antenna="plain+other://")
    finally:
        plugins.unregister("scheme-plugin")
    with pytest.raises(xraptor.UnknownSchemeError, match="no installed antenna accepts plain://"):
        XRaptor("127.0.0.1", 0, antenna="plain://")


@pytest.mark.parametrize(
    ("schemes", "error", "message"),
    [
        ("postgresql", TypeError, r"must be a tuple of str, e\.g\. \('postgresql',\)"),
        (None, TypeError, "must be a tuple of str"),
        (("postgresql://",), ValueError, "'postgresql://' is not a URL scheme"),
        (("",), ValueError, "'' is not a URL scheme"),
        (("9p",), ValueError, "'9p' is not a URL scheme"),
        (("\u212aafka",), ValueError, "is not a URL scheme"),  # Kelvin sign: lower() is "k"
        ((b"pg",), ValueError, "is not a URL scheme"),
    ],
)
def test_the_registry_refuses_bad_schemes(
    schemes: object, error: type[Exception], message: str
) -> None:
    plugins = Plugins(discover=False)
    bad = type("Bad", (xraptor.antennas.MemoryAntenna,), {"name": "bad", "schemes": schemes})
    with pytest.raises(error, match=message):
        plugins.antennas.add(bad)
    assert "bad" not in plugins.antennas.names()  # a refused class adds nothing


class _Offering:
    """An in-process plugin that registers the given antenna classes."""

    def __init__(self, *antenna_classes: type[xraptor.Antenna]) -> None:
        self.antenna_classes = antenna_classes

    @xraptor.hookimpl
    def xraptor_register_antennas(self, registry: Any) -> None:
        for antenna_class in self.antenna_classes:
            registry.add(antenna_class)


def test_a_scheme_two_plugins_claim_goes_to_the_later_one_as_names_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Postgres(xraptor.antennas.MemoryAntenna):
        name = "postgres"
        schemes = ("postgres", "postgresql")

    class Timescale(xraptor.antennas.MemoryAntenna):
        name = "timescale"
        schemes = ("timescale", "POSTGRESQL")

    class OtherPostgres(xraptor.antennas.MemoryAntenna):
        name = "postgres"

    plugins = Plugins(discover=False)
    caplog.set_level(logging.WARNING, logger="xraptor.plugins")
    plugins.register(_Offering(Postgres), "acme-xraptor-pg", "acme-xraptor-pg")
    assert not caplog.records
    plugins.register(_Offering(Timescale), "xraptor-timescale", "xraptor-timescale")
    assert [record.getMessage() for record in caplog.records] == [
        "antenna URL scheme 'postgresql' from xraptor-timescale (antenna 'timescale') "
        "replaces the one from acme-xraptor-pg (antenna 'postgres')"
    ]
    assert plugins.antennas.for_scheme("postgresql") is Timescale
    assert plugins.antennas.for_scheme("postgres") is Postgres
    assert plugins.info["xraptor-timescale"].schemes == ["postgresql", "timescale"]

    # the same rule for names, logged the same way
    caplog.clear()
    plugins.register(_Offering(OtherPostgres), "other-postgres")
    assert [record.getMessage() for record in caplog.records] == [
        "antenna 'postgres' from other-postgres replaces the one from acme-xraptor-pg",
        "antenna URL scheme 'postgres' from other-postgres (antenna 'postgres') "
        "replaces the one from acme-xraptor-pg (antenna 'postgres')",
    ]
    assert plugins.antenna_class("postgres") is OtherPostgres
    assert plugins.antennas.for_scheme("postgres") is OtherPostgres

    # a plugin taken out takes its schemes along (nothing is handed back, as for names)
    plugins.unregister("xraptor-timescale")
    assert plugins.antennas.schemes() == ["memory", "postgres"]
    caplog.clear()
    plugins.antennas.add(Postgres)  # registering the same class again is no clash
    plugins.antennas.add(Postgres)
    assert len(caplog.records) == 2  # the name and postgres:// taken back, once each
