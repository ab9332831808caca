"""Sessions: the core tests, each plugin's tests, end-to-end tests, lint, types and benchmarks.

``nox`` runs the default sessions (everything but ``bench``, ``conformance`` and ``demo``);
``nox -s tests`` runs one.
"""

from __future__ import annotations

import time
from pathlib import Path

import nox

nox.options.sessions = ["tests", "redis", "nats", "picows", "e2e", "lint", "types"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PYTHON = "3.11"
PLUGINS = {
    "redis": "plugins/xraptor-redis",
    "nats": "plugins/xraptor-nats",
    "picows": "plugins/xraptor-picows",
}
TOOLS = ["ruff>=0.6", "mypy>=1.11"]
#: the conformance suite (its case list is not a documented API: pinned below 0.2)
KOSOKU = "kosoku>=0.1,<0.2"


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


#: the core's tests of serving connections, run again on the picows transport
PICOWS_CORE_TESTS = [
    f"tests/test_{name}.py"
    for name in (
        "requests", "streams", "edge", "drain", "concurrency", "origins", "auth", "client",
        "apps", "antenna_health",
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
    """mypy --strict on the core, the plugins, the conformance runner, this noxfile and the
    sdists' build hook."""
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
    session.run("mypy", "--strict", "noxfile.py")
    session.run("mypy", "--strict", "hatch_build.py")  # the plugins' copies are equal (tested)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Serve the chat demo on the in-memory antenna."""
    session.install("-e", ".")
    session.run("xraptor", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against raw websockets, xraptor 0.4.1 and python-socketio on uvicorn.

    bench/run.py; not run by default. Creates bench/.venv-041 for 0.4.1 on first use.
    ``nox -s bench -- --quick`` for a smoke run, ``-- --only rr --pairs 5`` for one case,
    ``-- --only mixed`` for the 5 ms handler case against python-socketio.
    """
    session.install("-e", ".", *(f"-e{path}" for path in PLUGINS.values()))
    session.install("picows", "uvloop", "psutil", "redis", "nats-py", "python-socketio", "uvicorn")
    session.run("python", "bench/run.py", *session.posargs)


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
