"""What plugin and application authors import in their tests.

* :class:`TestClient`: an app's client in the same process, with no port and no
  socket (``async with TestClient(app) as client: ...``); the pytest fixtures
  ``xraptor_client``, ``xraptor_connect`` (typed :class:`Connect`), ``xraptor_app``
  and ``xraptor_antenna`` come with it (:mod:`xraptor.testing.pytest_plugin`,
  loaded by pytest wherever xraptor is installed; they need pytest-asyncio).
* :class:`AntennaConformance`: the antenna contract as a pytest suite. Subclass
  it in a ``Test...`` class and provide an ``antenna_factory`` fixture that
  returns a callable making a new, unstarted antenna; two antennas from the
  factory must behave like two processes sharing one backend. An antenna with a
  real backend also provides ``backend_fault`` (a :class:`BackendFault` that stops
  and starts it: the fault tests), and optionally ``antenna_resources`` (what an
  antenna holds at its backend, counted). :class:`ChannelNames` makes the suite's
  channel names unique to each test.
* :class:`HistoryConformance`: the optional history capability as a pytest suite,
  for antennas that declare it (same ``antenna_factory`` fixture).
* :class:`PresenceConformance`: the optional presence capability, likewise.
* :func:`eventually`: poll an async condition with a deadline; :func:`until`: a plain one.
* :func:`health`: a running server's ``/health`` status and document;
  :func:`seconds_until_health`: how long until it answers a given status.
* :func:`self_signed_cert`: a throw-away TLS certificate (needs ``openssl``).
* :class:`ServerProcess`: a server in a process of its own (``xraptor run`` or a
  script ending with :func:`serve_until_terminated`), on a port given
  (:func:`free_port`, :func:`xraptor_run`) or printed.
  :mod:`xraptor.testing.chat`: members of the chat demo's rooms across such processes.
* :func:`xraptor.testing.faults.freeze_and_thaw`: a backend frozen under a running
  server turns ``/health`` to 503 and back (for antennas that implement ``ping``).

The names are imported on first use, so that importing this package (as the pytest
plugin does in every test run) costs neither pytest-asyncio nor the conformance suite.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Connect, TestClient
    from .conformance import (
        AntennaConformance,
        BackendFault,
        ChannelNames,
        ResourceCounter,
        eventually,
        until,
    )
    from .history import HistoryConformance
    from .http import health, seconds_until_health
    from .presence import PresenceConformance
    from .processes import (
        ServerProcess,
        free_port,
        serve_until_terminated,
        xraptor_run,
    )
    from .tls import self_signed_cert

__all__ = [
    "AntennaConformance",
    "BackendFault",
    "ChannelNames",
    "Connect",
    "HistoryConformance",
    "PresenceConformance",
    "ResourceCounter",
    "ServerProcess",
    "TestClient",
    "eventually",
    "free_port",
    "health",
    "seconds_until_health",
    "self_signed_cert",
    "serve_until_terminated",
    "until",
    "xraptor_run",
]

_MODULES = {
    "AntennaConformance": "conformance",
    "BackendFault": "conformance",
    "ChannelNames": "conformance",
    "ResourceCounter": "conformance",
    "Connect": "client",
    "HistoryConformance": "history",
    "PresenceConformance": "presence",
    "TestClient": "client",
    "eventually": "conformance",
    "until": "conformance",
    "ServerProcess": "processes",
    "free_port": "processes",
    "serve_until_terminated": "processes",
    "xraptor_run": "processes",
    "health": "http",
    "seconds_until_health": "http",
    "self_signed_cert": "tls",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
