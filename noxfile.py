"""Sessions: the core tests, each plugin's tests, end-to-end tests, lint, types, the built
distributions and benchmarks.

``nox`` runs the default sessions (everything but ``bench``, ``conformance``, ``demo`` and
``sdist_tests``); ``nox -s tests`` runs one.
"""

from __future__ import annotations

import time
from pathlib import Path

import nox

nox.options.sessions = [
    "tests", "redis", "nats", "postgres", "picows", "e2e", "lint", "types", "dist",
]  # fmt: skip
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PYTHON = "3.11"
PLUGINS = {
    "redis": "plugins/xraptor-redis",
    "nats": "plugins/xraptor-nats",
    "picows": "plugins/xraptor-picows",
    "postgres": "plugins/xraptor-postgres",
}
TOOLS = ["ruff>=0.6", "mypy>=1.11", "asyncpg-stubs>=0.29"]
#: the conformance suite (its case list is not a documented API: pinned below 0.2)
KOSOKU = "kosoku>=0.1,<0.2"
#: building and checking the distributions (readme_renderer[md] renders the Markdown READMEs;
#: virtualenv makes the venvs of the installed wheels)
DIST_TOOLS = ["build>=1.2", "twine>=6.1", "readme_renderer[md]>=43", "virtualenv>=20.26"]


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("python", "-m", "pytest", *paths, *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The core's tests, with no backend plugin installed."""
    session.install("-e", ".[test]")
    _pytest(session, "tests", "--ignore=tests/e2e")


def _plugin_session(session: nox.Session, name: str, extras: str = "test") -> None:
    session.install("-e", ".[test]", "-e", f"{PLUGINS[name]}[{extras}]")
    _pytest(session, f"{PLUGINS[name]}/tests")


@nox.session(python=PYTHON)
@nox.parametrize("parser", ["python", "hiredis"])
def redis(session: nox.Session, parser: str) -> None:
    """The xraptor-redis plugin's tests against a real redis-server, with each reply parser."""
    _plugin_session(session, "redis", "test" if parser == "python" else "test,hiredis")


@nox.session(python=PYTHON)
def nats(session: nox.Session) -> None:
    """The xraptor-nats plugin's tests against a real nats-server."""
    _plugin_session(session, "nats")


@nox.session(python=PYTHON)
def postgres(session: nox.Session) -> None:
    """The xraptor-postgres plugin's tests on a private PostgreSQL cluster (initdb as the
    postgres user when run as root; the server binaries from /usr/lib/postgresql/*/bin)."""
    _plugin_session(session, "postgres")


#: the core's tests of serving connections, run again on the picows transport
PICOWS_CORE_TESTS = [
    f"tests/test_{name}.py"
    for name in (
        "requests", "streams", "edge", "drain", "concurrency", "origins", "auth", "client",
        "apps", "antenna_health", "demo", "cork",
    )
]  # fmt: skip


@nox.session(python=PYTHON)
def picows(session: nox.Session) -> None:
    """The xraptor-picows plugin's tests, then the core's serving tests on its transport."""
    _plugin_session(session, "picows")
    session.run(
        "python", "-m", "pytest", *PICOWS_CORE_TESTS, *session.posargs,
        env={"XRAPTOR_TRANSPORT": "picows"},
    )  # fmt: skip


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """End to end: the demo page in headless Chromium, `xraptor run --workers` over Redis.

    Needs Debian's chromium (/usr/bin/chromium) and redis-server; Playwright drives
    that chromium, so `playwright install` is never run. With every plugin installed
    here, the README's Redis and NATS snippets run too (the core session skips them).
    """
    session.install("-e", ".[test]", *(f"-e{path}" for path in PLUGINS.values()), "playwright")
    _pytest(session, "tests/e2e", "tests/test_readme_snippets.py")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    """mypy --strict on the core, the plugins, the conformance runner, the benchmarks, this
    noxfile, the distribution check and the sdists' build hook."""
    session.install(
        "-e",
        ".[test]",
        *(f"-e{path}" for path in PLUGINS.values()),
        *TOOLS,
        "nox",
        KOSOKU,
        "hatchling",
    )
    session.run("mypy")
    for path in PLUGINS.values():
        package = next(p.name for p in (ROOT / path).iterdir() if p.name.startswith("xraptor_"))
        session.run("mypy", "--strict", f"{path}/{package}")
    session.run("mypy", "--strict", "conformance")
    # the scripts import each other by module name; bench/cluster.py imports the Redis
    # plugin's tests/cluster_support.py (its fixture code)
    bench = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "bench").glob("*.py"))
    session.run(
        "mypy", "--strict", *bench, env={"MYPYPATH": f"{PLUGINS['redis']}/tests"}
    )  # fmt: skip
    session.run("mypy", "--strict", "noxfile.py")
    session.run("mypy", "--strict", ".ci/dist_check.py", ".ci/dist_room.py")
    session.run("mypy", "--strict", "hatch_build.py")  # the plugins' copies are equal (tested)


@nox.session(python=PYTHON)
def dist(session: nox.Session) -> None:
    """The distributions as users get them (.ci/dist_check.py, about two minutes).

    Builds every sdist and wheel, reads them (files, LICENSE, versions, the package index
    description), runs ``twine check --strict``, then per Python 3.11-3.13 found (pyenv's
    included; a missing one is skipped, none found fails under CI=true) installs the plugins
    (``xraptor-redis xraptor-nats ...``) from the built wheels next to the package index in a
    fresh venv and checks the resolved versions, ``pip check``, ``xraptor plugins``, a Redis
    room across two ``xraptor run`` processes (private redis-server; the second on picows)
    and ``xraptor demo``'s page.
    ``nox -s dist -- --python 3.12`` checks one Python.
    """
    session.install(*DIST_TOOLS)
    dist_dir = Path(session.create_tmp()) / "dist"
    session.run("python", ".ci/dist_check.py", "--dist", str(dist_dir), *session.posargs)


@nox.session(python=PYTHON)
def sdist_tests(session: nox.Session) -> None:
    """Each sdist's own tests, run from its unpacked folder in a venv of its own (opt-in).

    Builds the distributions as ``dist`` does, then per sdist: ``pip install '.[test]'``
    (the other distributions from the built wheels) and ``python -m pytest`` in the
    unpacked folder. About six minutes; needs redis-server and nats-server as the plugin
    sessions do.
    """
    session.install(*DIST_TOOLS)
    dist_dir = Path(session.create_tmp()) / "dist"
    session.run("python", ".ci/dist_check.py", "--dist", str(dist_dir), "--sdist-tests")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Serve the chat demo on the in-memory antenna."""
    session.install("-e", ".")
    session.run("xraptor", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against raw websockets, xraptor 0.4.1, python-socketio on uvicorn and
    encode/broadcaster on Starlette; xraptor on both transports and through ASGI.

    bench/run.py; not run by default. Creates bench/.venv-041, bench/.venv-sio and
    bench/.venv-broadcaster on first use (each peer in a virtualenv of its own).
    ``nox -s bench -- --quick`` for a smoke run, ``-- --only rr --pairs 5`` for one case,
    ``-- --only mixed`` for the 5 ms handler case against python-socketio. Without
    arguments (or with ``--quick``) the compression cases (bench/deflate.py) and room
    history on Redis and NATS (bench/history.py, bench/history_nats.py) follow.
    """
    session.install("-e", ".", *(f"-e{path}" for path in PLUGINS.values()))
    # pytest: bench/cluster.py starts its cluster with the Redis plugin's test fixture code
    session.install("picows", "uvloop", "psutil", "redis", "nats-py", "uvicorn", "pytest")
    session.run("python", "bench/run.py", *session.posargs)
    if not session.posargs or session.posargs == ["--quick"]:
        # in the same run: compression (README "Compression"), room history (issue 12)
        for script in ("deflate.py", "history.py", "history_nats.py"):
            session.run("python", f"bench/{script}", *session.posargs)
    if not session.posargs:  # a full run: Redis Cluster against one Redis too (issue 14)
        session.run("python", "bench/cluster.py")


@nox.session(python=PYTHON)
def bench_history(session: nox.Session) -> None:
    """Room history on Redis: fan-out with history against without, and the recovery
    throughput (bench/history.py; not run by default). ``-- --quick`` for a smoke run."""
    session.install("-e", ".", *(f"-e{path}" for path in PLUGINS.values()))
    session.install("picows", "uvloop", "psutil", "redis")
    session.run("python", "bench/history.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_cluster(session: nox.Session) -> None:
    """Redis Cluster fan-out against one Redis, and publish throughput of one room
    against many rooms over the shards (bench/cluster.py; needs redis-server, redis-cli).

    ``nox -s bench_cluster -- --pairs 1 --members 100`` for a small run.
    """
    session.install("-e", ".", *(f"-e{path}" for path in PLUGINS.values()))
    # pytest: bench/cluster.py starts its cluster with the Redis plugin's test fixture code
    session.install("picows", "uvloop", "psutil", "redis", "nats-py", "uvicorn", "pytest")
    session.run("python", "bench/cluster.py", *session.posargs)


@nox.session(python=PYTHON)
@nox.parametrize("transport", ["websockets", "picows"])
def conformance(session: nox.Session, transport: str) -> None:
    """RFC 6455: the kosoku suite against xraptor and a raw websockets echo server (opt-in).

    Compares per case who closed the connection and with which code; fails when a case of
    groups 1-7 differs and is not in conformance/allowed_differences.toml. Runs xraptor on
    each transport (``nox -s "conformance(transport='picows')"`` for one). Arguments go to
    ``python -m conformance``: ``-- --cases '6.*'``, ``-- --slow`` (adds compression, minutes).
    """
    started = time.monotonic()
    try:
        session.install("-e", ".", KOSOKU)
        if transport != "websockets":
            session.install("-e", PLUGINS[transport])
        report = Path(session.create_tmp()) / f"conformance-{transport}.json"
        session.run(
            "python", "-m", "conformance", "--json", str(report), *session.posargs,
            env={"XRAPTOR_TRANSPORT": transport},
        )  # fmt: skip
    finally:
        session.log(f"conformance session wall time: {time.monotonic() - started:.1f} s")
