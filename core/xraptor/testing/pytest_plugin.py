"""xraptor's pytest plugin: fixtures for testing an app in process.

pytest loads it wherever xraptor is installed (the ``pytest11`` entry point
``xraptor``; ``-p no:xraptor`` turns it off). The fixtures need pytest-asyncio
(``pip install 'xraptor[testing]'``); they work in its ``auto`` and ``strict`` modes.

* ``xraptor_app``: the app to test. Override it in your ``conftest.py`` to return
  a new app for each test (an app starts once); the default is a new
  ``XRaptor(antenna=xraptor_antenna)``, which serves what is registered on the
  class (``XRaptor.register(...)``).
* ``xraptor_client``: a :class:`~xraptor.testing.TestClient` connected to
  ``xraptor_app`` (no port, no socket).
* ``xraptor_connect``: ``await xraptor_connect(token=..., headers=..., path=...)``
  connects one more TestClient (the arguments of :class:`TestClient`); the app
  stays started for the whole test, so clients may come and go and a refused one
  (websockets' ``InvalidStatus``) does not stop it. Clients still open are closed
  at the end of the test.
* ``xraptor_antenna``: a new, unstarted :class:`~xraptor.antennas.MemoryAntenna`,
  closed at the end of the test.

This module imports neither pytest-asyncio nor the fixtures' code until pytest is
configured, and then only where pytest-asyncio is active.
"""

from __future__ import annotations

import sys

import pytest

#: the name of the plugin the fixtures are registered as
FIXTURES_PLUGIN = "xraptor-fixtures"

_NEEDS_PYTEST_ASYNCIO = (
    "the xraptor fixtures need the pytest-asyncio plugin, which is not active: "
    "pip install 'xraptor[testing]' (or pytest-asyncio), and do not disable it (-p no:asyncio)"
)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin(FIXTURES_PLUGIN):
        return
    if _pytest_asyncio_active(config):
        from . import _fixtures

        config.pluginmanager.register(_fixtures, FIXTURES_PLUGIN)
    else:
        config.pluginmanager.register(_WithoutPytestAsyncio(), FIXTURES_PLUGIN)


def _pytest_asyncio_active(config: pytest.Config) -> bool:
    plugin = sys.modules.get("pytest_asyncio.plugin")
    return plugin is not None and config.pluginmanager.is_registered(plugin)


class _WithoutPytestAsyncio:
    """The fixtures' names, each failing with how to get pytest-asyncio."""

    @pytest.fixture
    def xraptor_antenna(self) -> None:
        pytest.fail(_NEEDS_PYTEST_ASYNCIO, pytrace=False)

    @pytest.fixture
    def xraptor_app(self) -> None:
        pytest.fail(_NEEDS_PYTEST_ASYNCIO, pytrace=False)

    @pytest.fixture
    def xraptor_client(self) -> None:
        pytest.fail(_NEEDS_PYTEST_ASYNCIO, pytrace=False)

    @pytest.fixture
    def xraptor_connect(self) -> None:
        pytest.fail(_NEEDS_PYTEST_ASYNCIO, pytrace=False)
