"""Room history on JetStream: the history conformance suite, and what NATS adds to it
(streams per policy, the subjects other services use, outages of the server).

The suite runs on a private ``nats-server -js`` with a store directory of its own
when the binary is there, else on ``XRAPTOR_NATS_URL`` (which must have JetStream);
every test's subject prefix is its own (conftest), so are its streams, and the
streams a test made are deleted after it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats_support import NatsServer, free_port, nats_binary

from xraptor import AntennaUnavailable
from xraptor.history import HistoryEntry, HistoryPolicy, Position
from xraptor.testing import HistoryConformance
from xraptor_nats.antenna import NatsAntenna
from xraptor_nats.history import default_stream_prefix
from xraptor_nats.subjects import channel_token


def jetstream_server(store: Path) -> NatsServer | None:
    binary = nats_binary()
    if binary is None:
        return None
    return NatsServer(
        f"nats://127.0.0.1:{free_port()}", binary, ("-js", "-sd", str(store))
    )


@pytest.fixture(scope="module")
def jetstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = jetstream_server(tmp_path_factory.mktemp("jetstream"))
    if server is None:
        url = os.environ.get("XRAPTOR_NATS_URL")
        if not url:
            reason = "no nats-server on PATH and XRAPTOR_NATS_URL is not set"
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true: {reason}")
            pytest.skip(reason)
        yield url
        return
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def delete_streams(url: str, stream_prefix: str) -> list[str]:
    """Delete the history streams named ``<stream_prefix>_...``; their names."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        names = [info.config.name for info in await js.streams_info()]
        mine = [name for name in names if name and name.startswith(f"{stream_prefix}_")]
        for name in mine:
            await js.delete_stream(name)
        return mine
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def own_streams(jetstream_url: str) -> AsyncIterator[str]:
    """This test's history stream prefix; its streams are deleted afterwards."""
    prefix = default_stream_prefix(NatsAntenna._config["subject_prefix"])
    yield prefix
    await delete_streams(jetstream_url, prefix)


class TestNatsHistory(HistoryConformance):
    @pytest.fixture
    def antenna_factory(self, jetstream_url: str, own_streams: str) -> Callable[[], NatsAntenna]:
        return lambda: NatsAntenna(servers=jetstream_url)
