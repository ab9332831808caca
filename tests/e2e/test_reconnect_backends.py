"""The reconnecting Python client's acceptance scenario over Redis and NATS (JetStream),
and with the second server in a process of its own.

The e2e session installs every plugin and starts private servers
(tests/e2e/conftest.py); the scenario itself is the one the core session runs on the
memory antenna (tests/test_client_reconnect.py): 1,000 messages at a steady rate, the
subscriber cut twice (a server-side abort, then a TCP proxy dropping the connection,
which may send the reconnection to a second server on the same backend), each message
received once, in order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_client_reconnect as base
from e2e_support import free_port, running, xraptor_command
from reconnect_support import (
    BACKENDS,
    ChatApp,
    chat_app,
    every_message_once_across_two_cuts,
    started,
)
from tcp_proxy import TcpProxy

#: collected here too: the scenario's fixtures and test, with this module's ``antenna``
chat, proxy = base.chat, base.proxy
test_every_message_once_in_order_across_two_cuts = (
    base.test_every_message_once_in_order_across_two_cuts
)
#: where ``xraptor run reconnect_app:app`` finds its module
HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["redis", "nats"])
def antenna(request: pytest.FixtureRequest) -> str:
    return BACKENDS[request.param](request)


async def test_the_subscriber_recovers_on_a_second_server_process(
    antenna: str, chat: ChatApp, proxy: TcpProxy
) -> None:
    """The scenario with the reconnection after the proxy's drop sent to another
    ``xraptor run`` process on the same backend: it still recovers everything."""
    port = free_port()
    command = xraptor_command("run", "reconnect_app:app", "--antenna", antenna, "--port", str(port))
    with running(command, port, cwd=HERE):
        async with started(chat_app(antenna)) as publisher_app:
            await every_message_once_across_two_cuts(
                chat, proxy, publisher_app.url, reconnect_to=port
            )
