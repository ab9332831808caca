"""Build the distributions and check them as a user gets them (``nox -s dist``).

1. Builds the sdist and the wheel of ``xraptor`` and of every plugin under ``plugins/``
   (``xraptor-redis``, ``xraptor-nats``, ...; ``python -m build``: each wheel is built
   from its sdist) into ``--dist``.
2. Reads them: the versions of the sources, LICENSE and ``License-File`` in each sdist
   and wheel, the files of each sdist (the core's: only the core and its tests), the
   repository URL, and the description the package index shows (links absolute,
   installing before developing).
3. ``twine check --strict`` on all of them.
4. For each Python of ``PYTHONS`` found on this machine, in a fresh venv, installs the
   plugins (``xraptor-redis xraptor-nats ...``) with ``--find-links`` to the built wheels
   (wheels only for the built distributions) and the package index for everything else,
   so the resolver has to pick the core built here over xraptor 0.4.1 from the index,
   then checks: the installed versions are the built ones (``importlib.metadata``, ``pip
   show``), ``pip check``, ``xraptor plugins`` lists memory and every plugin's entry
   points, two ``xraptor run`` processes of an app that selects ``antenna="redis"`` by
   name serve one room on a private ``redis-server`` (.ci/dist_room.py: a client on each
   process hears both; the second process on the picows transport when that plugin is
   built), and ``xraptor demo`` serves its chat page at ``GET /``.

A Python that is missing is skipped with the reason; under ``CI=true`` the run fails when
none is found, or when ``redis-server`` is missing. With ``--sdist-tests`` (``nox -s
sdist_tests``) it also unpacks each sdist, installs it with its ``test`` extra into a venv
and runs its tests from the unpacked folder, instead of step 4.

Standard library only (with virtualenv, when installed, to make the venvs faster): it
runs on the nox session's Python and drives the venvs it makes.
"""

from __future__ import annotations

import argparse
import email.message
import email.parser
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _project(folder: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return project


#: every plugin distribution of the repository (plugins/<name>/pyproject.toml)
PLUGINS = {
    folder.name: folder
    for folder in sorted((ROOT / "plugins").iterdir())
    if (folder / "pyproject.toml").is_file()
}
PROJECTS = {"xraptor": ROOT, **PLUGINS}
PYTHONS = ("3.11", "3.12", "3.13")
REPOSITORY = "https://github.com/xraptor/xraptor"
#: what ``xraptor plugins`` must list: the built-in one and each plugin's entry points
PLUGIN_NAMES = ["memory"] + [
    entry for folder in PLUGINS.values() for entry in _project(folder)["entry-points"]["xraptor"]
]
#: what each sdist may hold at its top level (the core's: not the plugins, bench/, ...)
SDIST_TOP = {
    "xraptor": {"core", "tests", "README.md", "CHANGELOG.md", "LICENSE"},
    **{name: {name.replace("-", "_"), "tests", "README.md", "LICENSE"} for name in PLUGINS},
}
SDIST_ALWAYS = {"pyproject.toml", "PKG-INFO", "hatch_build.py"}
STARTUP = 30.0  # seconds a server gets to answer


class CheckFailed(Exception):
    """A check that did not hold; the message says what was found."""


@dataclass
class Artifact:
    """The sdist and wheel of one distribution."""

    name: str
    version: str
    sdist: Path
    wheel: Path


@dataclass
class PythonResult:
    """What was checked on one Python, or why it was skipped."""

    version: str
    interpreter: str = ""
    skipped: str = ""
    checks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failure: str = ""

    def passed(self, check: str) -> None:
        self.checks.append(check)
        log(f"Python {self.version}: ok: {check}")


def log(message: str) -> None:
    print(f"dist_check: {message}", flush=True)


def run(
    command: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> str:
    """Run a command; its output, or :class:`CheckFailed` with its end."""
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})}
    try:
        done = subprocess.run(
            [str(part) for part in command],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{' '.join(map(str, command))}: no end after {timeout} s") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise CheckFailed(f"{' '.join(map(str, command))} exited {done.returncode}:\n{tail}")
    return output


# ----- sources and artifacts ---------------------------------------------------------------


def source_versions() -> dict[str, str]:
    """The versions written in the sources (core/xraptor/_version.py, the plugins' pyproject)."""
    text = (ROOT / "core" / "xraptor" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise CheckFailed("core/xraptor/_version.py has no __version__")
    versions = {"xraptor": match.group(1)}
    for name, folder in PLUGINS.items():
        versions[name] = _project(folder)["version"]
    return versions


def build(dist: Path) -> dict[str, Artifact]:
    """Build every sdist and wheel into ``dist`` (emptied first)."""
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    # one process per distribution: each build sets up its own isolated environments
    with ThreadPoolExecutor(len(PROJECTS)) as pool:
        builds = [
            pool.submit(run, [sys.executable, "-m", "build", "--outdir", dist, folder])
            for folder in PROJECTS.values()
        ]
        for future in builds:
            future.result()
    expected = source_versions()
    artifacts: dict[str, Artifact] = {}
    for name, version in expected.items():
        stem = f"{name.replace('-', '_')}-{version}"
        sdist, wheel = dist / f"{stem}.tar.gz", dist / f"{stem}-py3-none-any.whl"
        if not (sdist.is_file() and wheel.is_file()):
            found = sorted(p.name for p in dist.iterdir())
            raise CheckFailed(f"expected {sdist.name} and {wheel.name}, built {found}")
        artifacts[name] = Artifact(name, version, sdist, wheel)
    if len(list(dist.iterdir())) != 2 * len(artifacts):
        raise CheckFailed(f"unexpected files in {dist}: {sorted(p.name for p in dist.iterdir())}")
    return artifacts


def _metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


def _check_description(name: str, message: email.message.Message) -> None:
    """What the package index shows: no relative links, installing before developing."""
    description = message.get_payload()
    if not isinstance(description, str) or not description.strip():
        raise CheckFailed(f"{name}: no description")
    relative = [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", description)
        if not re.match(r"(https?://|#|mailto:)", target)
    ]
    if relative:
        raise CheckFailed(f"{name}: the description links to relative paths {relative}")
    first_install = next((line for line in description.splitlines() if "pip install" in line), None)
    if first_install is None or " -e " in first_install or "nox" in first_install:
        raise CheckFailed(f"{name}: the description's first install line is {first_install!r}")


def check_artifacts(artifacts: dict[str, Artifact]) -> list[str]:
    """Read each sdist and wheel; what was checked."""
    license_text = (ROOT / "LICENSE").read_text()
    for name, artifact in artifacts.items():
        base = f"{name.replace('-', '_')}-{artifact.version}"
        with tarfile.open(artifact.sdist) as sdist:
            names = sdist.getnames()
            top = {n.split("/", 2)[1] for n in names if n.count("/") >= 1 and n != base}
            unexpected = top - SDIST_TOP[name] - SDIST_ALWAYS
            missing = SDIST_TOP[name] - top
            if unexpected or missing:
                raise CheckFailed(
                    f"{artifact.sdist.name}: unexpected {sorted(unexpected)}, "
                    f"missing {sorted(missing)}"
                )
            if not any(n.startswith(f"{base}/tests/test_") for n in names):
                raise CheckFailed(f"{artifact.sdist.name} holds no tests")
            pkg_info = _extract_text(sdist, f"{base}/PKG-INFO")
            if _extract_text(sdist, f"{base}/LICENSE") != license_text:
                raise CheckFailed(f"{artifact.sdist.name}: LICENSE differs from the repository's")
            pyproject = tomllib.loads(_extract_text(sdist, f"{base}/pyproject.toml"))
            if pyproject["tool"]["pytest"]["ini_options"].get("asyncio_mode") != "auto":
                raise CheckFailed(f"{artifact.sdist.name}: its tests have no asyncio_mode")
        with zipfile.ZipFile(artifact.wheel) as wheel:
            info = f"{base}.dist-info"
            metadata = _metadata(wheel.read(f"{info}/METADATA").decode())
            if wheel.read(f"{info}/licenses/LICENSE").decode() != license_text:
                raise CheckFailed(f"{artifact.wheel.name}: LICENSE differs from the repository's")
        for label, message in (("sdist", _metadata(pkg_info)), ("wheel", metadata)):
            where = f"{name} {label}"
            if message["Version"] != artifact.version:
                raise CheckFailed(f"{where}: version {message['Version']}")
            if message["License-Expression"] != "MIT" or message["License-File"] != "LICENSE":
                raise CheckFailed(f"{where}: no MIT License-Expression and License-File")
            urls = dict(u.split(", ", 1) for u in message.get_all("Project-URL") or [])
            if urls.get("Repository") != REPOSITORY:
                raise CheckFailed(f"{where}: Repository URL {urls.get('Repository')!r}")
            _check_description(where, message)
    return [
        "sdist contents",
        "LICENSE and License-File in every sdist and wheel",
        "versions as in the sources",
        "descriptions with absolute links, install first",
    ]


def _extract_text(archive: tarfile.TarFile, member: str) -> str:
    handle = archive.extractfile(member)
    if handle is None:
        raise CheckFailed(f"{member} is missing")
    return handle.read().decode()


# ----- interpreters and processes -----------------------------------------------------------


def find_python(version: str) -> tuple[str | None, str]:
    """An interpreter of ``version`` (on PATH, else pyenv's; not one of a venv, such as
    the nox session's), or ``None`` and why not."""
    candidates = [shutil.which(f"python{version}") or ""]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(
        glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")),
        key=lambda path: [int(p) for p in re.findall(r"\d+", Path(path).parts[-3])],
        reverse=True,
    )
    for candidate in filter(None, candidates):
        try:
            output = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2], sys.prefix)"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if output.returncode != 0:
            continue  # e.g. a pyenv shim of a version that is not selected
        found, prefix = output.stdout.split(maxsplit=1)
        if found == version and not (Path(prefix.strip()) / "pyvenv.cfg").exists():
            return candidate, ""
    return None, f"no python{version} on PATH or under {pyenv}/versions"


def make_venv(interpreter: str | Path, venv: Path) -> None:
    """A fresh venv with pip: virtualenv's when the session has it (it seeds pip from a
    cache in a second, where ``-m venv`` runs ensurepip for about ten), else ``-m venv``."""
    if importlib.util.find_spec("virtualenv") is not None:
        run([sys.executable, "-m", "virtualenv", "--quiet", "--python", interpreter, venv])
    else:
        run([interpreter, "-m", "venv", venv])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def started(
    command: Sequence[str | Path], logfile: Path, *, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A background process, writing to ``logfile``; ended (TERM, then KILL) on exit."""
    with logfile.open("wb") as output:
        process = subprocess.Popen(
            [str(part) for part in command],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _tail(logfile: Path) -> str:
    return "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])


def wait_for(
    what: str, probe: Callable[[], bool], process: subprocess.Popen[bytes], logfile: Path
) -> None:
    """Call ``probe()`` until it returns true; fail if the process ends or time runs out."""
    deadline = time.monotonic() + STARTUP
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"{what} exited {process.returncode}:\n{_tail(logfile)}")
        try:
            if probe():
                return
        except (OSError, ValueError) as error:
            last = error
        time.sleep(0.2)
    raise CheckFailed(f"{what} not ready after {STARTUP} s ({last}):\n{_tail(logfile)}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def redis_answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def stop(process: subprocess.Popen[bytes], what: str, logfile: Path) -> None:
    """SIGTERM and expect a clean exit (the server drains and exits 0)."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{what} did not stop within 20 s of SIGTERM") from None
    if code != 0:
        raise CheckFailed(f"{what} exited {code} on SIGTERM:\n{_tail(logfile)}")


# ----- one Python ---------------------------------------------------------------------------


def check_python(
    result: PythonResult, dist: Path, artifacts: dict[str, Artifact], work: Path
) -> None:
    """Install from the wheels into a fresh venv of ``result.interpreter`` and run it."""
    venv = work / "venv"
    make_venv(result.interpreter, venv)
    python, scripts = venv / "bin" / "python", venv / "bin"
    started_at = time.monotonic()
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--find-links",
            dist,
            "--only-binary",
            ",".join(artifacts),
            *PLUGINS,
        ],
        cwd=work,
    )
    result.passed(
        f"pip install --find-links <dist> {' '.join(PLUGINS)} "
        f"({time.monotonic() - started_at:.0f} s)"
    )

    built = {name: artifact.version for name, artifact in artifacts.items()}
    versions = (
        "import importlib.metadata as m, json\n"
        f"print(json.dumps({{d: m.version(d) for d in {list(PROJECTS)!r}}}))"
    )
    installed = json.loads(run([python, "-c", versions], cwd=work).strip().splitlines()[-1])
    if installed != built:
        raise CheckFailed(f"pip installed {installed}, the built wheels are {built}")
    shown = run([python, "-m", "pip", "show", "xraptor"], cwd=work)
    if f"Version: {built['xraptor']}" not in shown.splitlines():
        raise CheckFailed(f"pip show xraptor:\n{shown}")
    imported = (
        f"import json, xraptor, {', '.join(n.replace('-', '_') for n in PLUGINS)}\n"
        "print(json.dumps([xraptor.__version__, xraptor.__file__]))"
    )
    module_version, module_file = json.loads(
        run([python, "-c", imported], cwd=work).strip().splitlines()[-1]
    )
    if module_version != built["xraptor"]:
        raise CheckFailed(f"xraptor.__version__ is {module_version}, built {built['xraptor']}")
    if not Path(module_file).resolve().is_relative_to(venv.resolve()):
        raise CheckFailed(f"xraptor imported from {module_file}, not from the venv")
    resolved = ", ".join(f"{name} {version}" for name, version in built.items())
    result.passed(f"resolved {resolved} (importlib.metadata, pip show); all import")

    run([python, "-m", "pip", "check"], cwd=work)
    result.passed("pip check")

    listed = run([scripts / "xraptor", "plugins"], cwd=work)
    found = {line.split(":", 1)[0] for line in listed.splitlines() if not line.startswith(" ")}
    if not set(PLUGIN_NAMES) <= found or "failed to load" in listed:
        raise CheckFailed(f"xraptor plugins:\n{listed}")
    result.passed(f"xraptor plugins: {', '.join(PLUGIN_NAMES)}")

    checks: list[Callable[[], str]] = [
        lambda: redis_room(python, scripts, work),
        lambda: demo_page(scripts, work),
    ]
    for check in checks:
        check_began = time.monotonic()
        outcome = check()
        result.passed(f"{outcome} ({time.monotonic() - check_began:.0f} s)")


def redis_room(python: Path, scripts: Path, work: Path) -> str:
    """Two ``xraptor run`` processes on a private redis-server; a client on each, one room."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        reason = "no redis-server on PATH"
        if os.environ.get("CI") == "true":
            raise CheckFailed(f"CI=true: {reason}")
        return f"redis room skipped: {reason}"
    shutil.copy(ROOT / ".ci" / "dist_room.py", work / "dist_room.py")
    redis_port = free_port()
    redis_log = work / "redis.log"
    redis_command = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis_command += ["--save", "", "--appendonly", "no"]  # nothing written to disk
    with started(redis_command, redis_log, cwd=work) as redis:
        wait_for("redis-server", lambda: redis_answers(redis_port), redis, redis_log)
        env = {"DIST_ROOM_REDIS": f"redis://127.0.0.1:{redis_port}/0"}
        ports = [free_port(), free_port()]
        # the second process on another transport when a transport plugin is built
        second_transport = ["--transport", "picows"] if "picows" in PLUGIN_NAMES else []
        logs = [work / f"room-{port}.log" for port in ports]
        xraptor_run: list[str | Path] = [scripts / "xraptor", "run", "dist_room:app", "--port"]
        with (
            started([*xraptor_run, str(ports[0])], logs[0], cwd=work, env=env) as first,
            started(
                [*xraptor_run, str(ports[1]), *second_transport], logs[1], cwd=work, env=env
            ) as second,
        ):
            for process, port, logfile in ((first, ports[0], logs[0]), (second, ports[1], logs[1])):

                def up(port: int = port) -> bool:
                    status, body = http_get(f"http://127.0.0.1:{port}/health")
                    antenna = json.loads(body).get("antenna", {})
                    return status == 200 and antenna.get("name") == "redis"

                wait_for(f"xraptor run on port {port}", up, process, logfile)
            client = run(
                [python, "dist_room.py", *(f"ws://127.0.0.1:{port}" for port in ports)],
                cwd=work,
                env=env,
                timeout=60,
            ).strip()
            if "each client heard both" not in client:
                raise CheckFailed(f"the room clients said:\n{client}")
            for process, port, logfile in ((first, ports[0], logs[0]), (second, ports[1], logs[1])):
                stop(process, f"xraptor run on port {port}", logfile)
    expected = ["websockets", second_transport[1] if second_transport else "websockets"]
    for logfile, transport in zip(logs, expected, strict=True):
        if f"antenna redis, transport {transport})" not in logfile.read_text(errors="replace"):
            raise CheckFailed(
                f"{logfile.name}: not served by redis and {transport}:\n{_tail(logfile)}"
            )
    transports = "websockets and " + second_transport[1] if second_transport else "websockets"
    return (
        'antenna="redis": one room across two xraptor run processes '
        f"(private redis-server; transports: {transports})"
    )


def demo_page(scripts: Path, work: Path) -> str:
    """``xraptor demo`` answers ``GET /`` with the chat page."""
    port = free_port()
    logfile = work / "demo.log"
    page: list[str] = []

    def served() -> bool:
        status, body = http_get(f"http://127.0.0.1:{port}/")
        page[:] = [body]
        return status == 200

    with started([scripts / "xraptor", "demo", "--port", str(port)], logfile, cwd=work) as demo:
        wait_for("xraptor demo", served, demo, logfile)
        if "<title>xraptor chat</title>" not in page[0]:
            raise CheckFailed(f"GET / of xraptor demo is not the chat page:\n{page[0][:500]}")
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=20)
    return "xraptor demo: GET / is the chat page"


def check_one_python(
    version: str, dist: Path, artifacts: dict[str, Artifact], tmp: Path
) -> PythonResult:
    """Find ``version`` and check it, or say why it was skipped or what failed."""
    result = PythonResult(version)
    interpreter, reason = find_python(version)
    if interpreter is None:
        result.skipped = reason
        log(f"Python {version}: skipped: {reason}")
        return result
    result.interpreter = interpreter
    log(f"Python {version}: {interpreter}")
    started_at = time.monotonic()
    work = tmp / f"py{version}"
    work.mkdir()
    try:
        check_python(result, dist, artifacts, work)
    except CheckFailed as failure:
        result.failure = str(failure)
        log(f"Python {version}: FAILED: {failure}")
    result.seconds = time.monotonic() - started_at
    return result


# ----- the sdists' own tests ----------------------------------------------------------------


def sdist_tests(dist: Path, artifacts: dict[str, Artifact], work: Path) -> list[str]:
    """Unpack each sdist, install it with its test extra, run its tests in its folder."""
    outcomes = []
    for name, artifact in artifacts.items():
        started_at = time.monotonic()
        with tarfile.open(artifact.sdist) as archive:
            archive.extractall(work, filter="data")
        folder = work / f"{name.replace('-', '_')}-{artifact.version}"
        venv = work / f"venv-{name}"
        make_venv(sys.executable, venv)
        python = venv / "bin" / "python"
        others = ",".join(other for other in artifacts if other != name)
        install: list[str | Path] = [python, "-m", "pip", "install", "--find-links", dist]
        run([*install, "--only-binary", others, ".[test]"], cwd=folder)
        output = run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder, timeout=1200
        )
        summary = output.strip().splitlines()[-1]
        outcomes.append(
            f"{artifact.sdist.name}: {summary.strip('= ')} "
            f"({time.monotonic() - started_at:.0f} s with the install)"
        )
        log(outcomes[-1])
    return outcomes


# ----- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where to build")
    parser.add_argument(
        "--python", action="append", choices=PYTHONS, help="only these (default: all found)"
    )
    parser.add_argument(
        "--sdist-tests", action="store_true", help="run each sdist's tests from its folder"
    )
    args = parser.parse_args(argv)
    began = time.monotonic()

    log(f"building into {args.dist}")
    artifacts = build(args.dist.resolve())
    built = ", ".join(f"{a.sdist.name} {a.wheel.name}" for a in artifacts.values())
    log(f"built {built} ({time.monotonic() - began:.0f} s)")
    for check in check_artifacts(artifacts):
        log(f"ok: {check}")
    run([sys.executable, "-m", "twine", "check", "--strict", *sorted(args.dist.iterdir())])
    log(f"ok: twine check --strict ({2 * len(artifacts)} files)")

    with tempfile.TemporaryDirectory(prefix="xraptor-dist-") as tmp:
        if args.sdist_tests:
            outcomes = sdist_tests(args.dist.resolve(), artifacts, Path(tmp))
            log(f"sdists' own tests, {time.monotonic() - began:.0f} s in all:")
            for outcome in outcomes:
                print(f"  {outcome}")
            return 0

        results = [
            check_one_python(version, args.dist.resolve(), artifacts, Path(tmp))
            for version in args.python or PYTHONS
        ]

    checked = [r for r in results if not r.skipped]
    log(f"summary ({time.monotonic() - began:.0f} s in all):")
    for result in results:
        if result.skipped:
            print(f"  Python {result.version}: skipped: {result.skipped}")
            continue
        print(f"  Python {result.version} ({result.seconds:.0f} s, {result.interpreter}):")
        for check in result.checks:
            print(f"    ok: {check}")
        if result.failure:
            print(f"    FAILED: {result.failure.splitlines()[0]}")
    failed = [r.version for r in results if r.failure]
    if failed:
        raise CheckFailed(f"Python {', '.join(failed)} failed (see above)")
    if not checked:
        message = "no Python of " + ", ".join(PYTHONS) + " was found"
        if os.environ.get("CI") == "true":
            raise CheckFailed(f"CI=true: {message}")
        log(f"warning: {message}; nothing was installed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as failure:
        print(f"dist_check: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
