"""``xraptor new-plugin NAME``: scaffold an antenna plugin distribution in a new folder.

The templates are Python strings in this module (so they ship in the wheel with
the code); ``@@name@@``, ``@@dist@@``, ``@@package@@`` and ``@@cls@@`` are
replaced by the plugin's antenna name, distribution name, package name and
antenna class name. The generated antenna is a working in-process stand-in (a
module-level bus), so that the generated conformance tests pass out of the box;
its docstrings state the contract, and its TODOs say what to replace.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["XRAPTOR_BOUND", "Names", "ScaffoldError", "files_for", "names_for", "scaffold"]

#: the version bound of xraptor a generated plugin declares
XRAPTOR_BOUND = "xraptor>=0.5,<0.6"

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_MAX_NAME = 40
#: names a plugin cannot take: the built-in antenna's
_RESERVED = {"memory"}


class ScaffoldError(Exception):
    """A bad name or a folder that cannot be used: printed, exit code 2."""


@dataclass(frozen=True)
class Names:
    """The names of one plugin, all derived from its antenna name."""

    #: the antenna name and entry-point name, e.g. ``my-bus``
    name: str
    #: the distribution name, e.g. ``xraptor-my-bus``
    dist: str
    #: the import package, e.g. ``xraptor_my_bus``
    package: str
    #: the antenna class, e.g. ``MyBusAntenna``
    cls: str


def names_for(name: str) -> Names:
    """The plugin's names from NAME (``postgres``, ``my-bus``).

    :raises ScaffoldError: when NAME is not lowercase letters and digits, in parts
        joined by single dashes, starting with a letter (at most 40 characters)
    """
    if name.startswith("xraptor-") or name.startswith("xraptor_"):
        raise ScaffoldError(
            f"give the antenna name without the 'xraptor-' prefix "
            f"(xraptor new-plugin {name.removeprefix('xraptor-').removeprefix('xraptor_')})"
        )
    if not (len(name) <= _MAX_NAME and _NAME.fullmatch(name)):
        raise ScaffoldError(
            f"invalid plugin name {name!r}: use lowercase letters and digits, starting with "
            f"a letter, in parts joined by single dashes (for example 'postgres' or "
            f"'my-bus'), at most {_MAX_NAME} characters"
        )
    if name in _RESERVED:
        raise ScaffoldError(f"{name!r} is the name of a built-in antenna: choose another")
    package = "xraptor_" + name.replace("-", "_")
    assert package.isidentifier() and not keyword.iskeyword(package)
    cls = "".join(part.capitalize() for part in name.split("-")) + "Antenna"
    return Names(name=name, dist=f"xraptor-{name}", package=package, cls=cls)


def files_for(names: Names) -> dict[str, str]:
    """The generated project: relative path -> text."""
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        ".gitignore": GITIGNORE,
        "@@package@@/__init__.py": INIT,
        "@@package@@/antenna.py": ANTENNA,
        "@@package@@/py.typed": "",
        "tests/conftest.py": CONFTEST,
        "tests/test_@@package@@_conformance.py": TEST_MODULE,
    }
    return {_fill(path, names): _fill(text, names) for path, text in files.items()}


def scaffold(name: str, folder: Path | None = None) -> tuple[Names, Path, list[Path]]:
    """Write the plugin project NAME into ``folder`` (default ``./xraptor-NAME``).

    :returns: the names, the folder and the files written
    :raises ScaffoldError: on a bad name, or a folder that exists and is not empty
        (nothing is overwritten), or is not a directory
    """
    names = names_for(name)
    target = Path(folder) if folder is not None else Path(names.dist)
    if target.exists():
        if not target.is_dir():
            raise ScaffoldError(f"{target} exists and is not a directory")
        if any(target.iterdir()):
            raise ScaffoldError(
                f"{target} exists and is not empty: nothing was written (choose another "
                "folder with --dir, or remove it)"
            )
    written: list[Path] = []
    for relative, text in files_for(names).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return names, target, written


def _fill(template: str, names: Names) -> str:
    return (
        template.replace("@@name@@", names.name)
        .replace("@@dist@@", names.dist)
        .replace("@@package@@", names.package)
        .replace("@@cls@@", names.cls)
        .replace("@@bound@@", XRAPTOR_BOUND)
    )


# ----- the templates ----------------------------------------------------------------------

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"

[project]
name = "@@dist@@"
version = "0.1.0"
description = "The @@name@@ antenna for xraptor"
readme = "README.md"
requires-python = ">=3.11"
# license = "MIT"
classifiers = [
    "Programming Language :: Python :: 3",
    "Programming Language :: Python :: 3.11",
    "Framework :: AsyncIO",
    "Typing :: Typed",
]
dependencies = [
    "@@bound@@",
    # TODO: your backend's client library
]

[project.optional-dependencies]
test = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-timeout>=2.3",
]

# xraptor finds the plugin through this entry point (group "xraptor")
[project.entry-points.xraptor]
@@name@@ = "@@package@@"

[tool.hatch.build.targets.wheel]
packages = ["@@package@@"]

[tool.hatch.build.targets.sdist]
include = ["@@package@@", "tests", "README.md"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
testpaths = ["tests"]
addopts = "-ra"
timeout = 60
"""

README = """\
# @@dist@@

The `@@name@@` antenna for [xraptor](https://pypi.org/project/xraptor/): select it
with `XRaptor(..., antenna="@@name@@")` or by URL, `antenna="@@name@@://..."`.

Generated by `xraptor new-plugin @@name@@`. The antenna in
`@@package@@/antenna.py` works as it is, on a bus inside the process (a stand-in for
your backend); replace each `TODO` with your backend's calls.

## Develop

```console
pip install -e '.[test]'
pytest                      # the xraptor antenna conformance suite
xraptor plugins             # lists @@name@@: @@dist@@ 0.1.0, antennas: @@name@@
```

The tests (`tests/test_@@package@@_conformance.py`) subclass
`xraptor.testing.AntennaConformance`, the contract every antenna runs. Once the
antenna talks to a real backend, start a private server for the tests in
`tests/conftest.py` and provide the `backend_fault` fixture (an example is there,
commented out): without it the fault tests skip, saying why.

## Options

| option | default | |
|---|---|---|
| `url` | `@@name@@://localhost` | where the backend is; `antenna="@@name@@://..."` sets it |
| `timeout` | `5` | seconds a publish may take before it raises `AntennaUnavailable` |
| `health_timeout`, `health_interval` | `3`, `1` | every antenna's: the background `ping` probe |
"""

GITIGNORE = """\
__pycache__/
*.egg-info/
build/
dist/
.pytest_cache/
"""

INIT = '''\
"""@@dist@@: the @@name@@ antenna for xraptor.

This module only registers what the plugin offers; the driver module loads when
the hook runs (so that ``xraptor plugins`` stays fast and a missing backend
library is reported as this plugin's failure, not xraptor's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xraptor

if TYPE_CHECKING:
    from xraptor.plugins import AntennaRegistry

__all__ = ["xraptor_register_antennas"]


@xraptor.hookimpl
def xraptor_register_antennas(registry: AntennaRegistry) -> None:
    from .antenna import @@cls@@

    registry.add(@@cls@@)
'''

ANTENNA = '''\
"""The @@name@@ antenna: the driver side of xraptor's antenna contract.

As generated, it runs on ``_BUS``, a pub/sub bus inside this process standing in
for your backend, so that the conformance suite passes from the start. Replace
every ``TODO`` with your backend's calls; keep the docstrings' promises.

The base class (:class:`xraptor.Antenna`) does the rest: local fan-out (one
``watch`` per channel per process, however many listeners), ``post``,
``subscribe``, ``listen``, the lifecycle (``start``/``close``, ``async with``),
argument checks and the ``state`` it starts and ends with.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import xraptor

#: TODO: remove; the stand-in backend: channel -> the antennas watching it
_BUS: dict[str, set[@@cls@@]] = {}

#: seconds a publish may take before it raises AntennaUnavailable (option ``timeout``)
DEFAULT_TIMEOUT = 5.0


class @@cls@@(xraptor.Antenna):
    """Pub/sub over @@name@@.

    Options (``antenna_options={...}``, or a URL, or the class-wide
    ``@@cls@@.set_config({...})``, which ``antenna_options`` override):

    * ``url``: where the backend is (default ``@@name@@://localhost``);
    * ``timeout``: seconds a publish may take before it raises
      :class:`xraptor.AntennaUnavailable` (default 5);
    * ``health_timeout``, ``health_interval``: every antenna's (defaults 3 and 1),
      used only if :meth:`ping` is implemented.
    """

    #: antenna="@@name@@" selects it
    name: ClassVar[str] = "@@name@@"
    #: antenna="@@name@@://..." selects it (the default, ``(name,)``, spelled out)
    schemes: ClassVar[tuple[str, ...]] = ("@@name@@",)

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """The options ``antenna="@@name@@://..."`` stands for (the base's default)."""
        return {"url": url}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # merges set_config() and checks the health options
        self.url: str = str(self.options.get("url", "@@name@@://localhost"))
        self.timeout = float(self.options.get("timeout", DEFAULT_TIMEOUT))
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout}")

    async def connect(self) -> None:
        """Open the backend connection(s). Called once, by :meth:`start`.

        The base class sets ``state`` to ``up`` when this returns (unless the driver
        said ``down`` meanwhile with :meth:`set_state`) and to ``closed`` on close.
        Raise to make ``start`` fail. After a reconnection in the background, call
        ``self.set_state("up")``, resubscribe ``self.watched_channels()`` and call
        ``self.report_gap()``; while the backend is unreachable,
        ``self.set_state("down")``.
        """
        # TODO: connect to self.url

    async def disconnect(self) -> None:
        """Release every backend resource (connections, tasks). Called once, by
        :meth:`close`; no listener is left by then."""
        # TODO: close your connections and cancel and await your tasks
        for channel in list(_BUS):
            self._leave(channel)

    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to ``channel``, to every process watching it now.

        Calls made in a given order must reach subscribers in that order, even
        when they run concurrently (through a pool of connections).

        :raises xraptor.AntennaUnavailable: when the backend cannot take it within
            ``self.timeout`` seconds
        """
        try:
            async with asyncio.timeout(self.timeout):
                # TODO: send to your backend; a backend's limits on channel names
                # (length, characters) are the driver's to hide, by encoding or
                # hashing, never by truncating
                for antenna in tuple(_BUS.get(channel, ())):
                    antenna.deliver(channel, message)
        except (TimeoutError, OSError) as error:
            raise xraptor.AntennaUnavailable(f"@@name@@: cannot publish: {error}") from error

    async def watch(self, channel: str) -> None:
        """Start receiving ``channel``, handing each message to ``self.deliver``.

        Must not return before a message published after it returns is sure to be
        delivered. Called at most once per channel at a time: the base class never
        runs ``watch`` or ``unwatch`` concurrently for the same channel, but may for
        different channels, so shared state (one subscriber connection) must take
        concurrent calls.
        """
        # TODO: subscribe at your backend; its reader calls self.deliver(channel, message)
        _BUS.setdefault(channel, set()).add(self)

    async def unwatch(self, channel: str) -> None:
        """Stop receiving ``channel`` and free what watching it held at the backend.

        Same concurrency as :meth:`watch`.
        """
        # TODO: unsubscribe at your backend
        self._leave(channel)

    async def is_alive(self, channel: str) -> bool:
        """Whether some process (this one included) listens to ``channel`` now.

        Ask the backend (never answer a constant). Called on an antenna that has not
        started, the base class starts it first.
        """
        # TODO: ask your backend (e.g. its subscriber count for the channel)
        return bool(_BUS.get(channel))

    # Optional: one round trip to the backend. Implementing it makes the base class
    # probe it every health_interval seconds; no answer within health_timeout makes
    # state "down" until one comes. It must be safe to cancel.
    #
    # async def ping(self) -> None:
    #     await self._connection.ping()

    def _leave(self, channel: str) -> None:
        watchers = _BUS.get(channel)
        if watchers is None:
            return
        watchers.discard(self)
        if not watchers:
            del _BUS[channel]
'''

CONFTEST = '''\
"""Fixtures of the @@dist@@ tests: the backend the conformance suite runs against."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from xraptor import Antenna

from @@package@@ import antenna as driver


@dataclass
class Backend:
    """What the tests know of the backend: its URL, and what an antenna holds there."""

    url: str

    def counts(self, antenna: Antenna) -> dict[str, int]:
        """What ``antenna`` holds at the backend, counted at the backend.

        TODO: with a real server, ask it (its client list, by a connection name the
        antenna factory sets): ``{"connections": ..., "subscriptions": ...}``.
        """
        watching = sum(antenna in watchers for watchers in driver._BUS.values())
        return {"subscriptions": watching}


@pytest.fixture
def @@package@@_backend() -> Iterator[Backend]:
    """A private backend the tests own.

    TODO: start a server on a free port (a subprocess), yield its URL, stop it after.
    """
    yield Backend(url="@@name@@://localhost")


# The fault tests need a way to take the backend away and bring it back at the same
# address (kill and restart the private server). Provide it, then return it from the
# test class's ``backend_fault`` fixture (see the test module):
#
# from xraptor.testing import BackendFault
#
#
# @pytest.fixture
# def @@package@@_fault(@@package@@_backend: Backend) -> BackendFault:
#     return BackendFault(stop=@@package@@_backend.kill, start=@@package@@_backend.start)
'''

TEST_MODULE = '''\
"""The xraptor antenna conformance suite, run against the @@name@@ antenna."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Backend
from xraptor import Antenna
from xraptor.testing import AntennaConformance, ResourceCounter

from @@package@@.antenna import @@cls@@


class Test@@cls@@(AntennaConformance):
    @pytest.fixture
    def antenna_factory(self, @@package@@_backend: Backend) -> Callable[[], Antenna]:
        """Makes a new, unstarted antenna; two of them behave like two processes."""
        return lambda: @@cls@@(url=@@package@@_backend.url)

    @pytest.fixture
    def antenna_resources(self, @@package@@_backend: Backend) -> ResourceCounter:
        """Optional: what one antenna holds at the backend (every count 0 after close)."""
        return @@package@@_backend.counts

    # Without backend_fault the fault tests skip, saying why: only an antenna without
    # a backend may go without. With the fixture of conftest.py:
    #
    # @pytest.fixture
    # def backend_fault(self, @@package@@_fault: BackendFault) -> BackendFault:
    #     return @@package@@_fault
    #
    # The suite's bounds fit most backends; raise them for a slow one:
    # unavailable_within = 5  # seconds for post() to raise AntennaUnavailable when down
    # recovery_within = 10  # seconds for state to go down, then up again
    # release_within = 5  # seconds for a release to show after unsubscribe or close
'''
