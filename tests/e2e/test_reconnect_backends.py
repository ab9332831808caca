"""The reconnecting Python client's acceptance scenario over Redis and NATS (JetStream).

The e2e session installs every plugin and starts private servers
(tests/e2e/conftest.py); the scenario itself is the one the core session runs on the
memory antenna (tests/test_client_reconnect.py): 1,000 messages at a steady rate, the
subscriber cut twice (a server-side abort, then a TCP proxy dropping the connection,
which may send the reconnection to a second server on the same backend), each message
received once, in order.
"""

from __future__ import annotations

import pytest
from reconnect_support import BACKENDS
from test_client_reconnect import (  # noqa: F401  (fixtures and the test, collected here)
    chat,
    proxy,
    test_every_message_once_in_order_across_two_cuts,
)


@pytest.fixture(params=["redis", "nats"])
def antenna(request: pytest.FixtureRequest) -> str:
    return BACKENDS[request.param](request)
