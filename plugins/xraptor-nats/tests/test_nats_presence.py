"""Presence on NATS: the capability's conformance suite against a real nats-server with
JetStream, and presence across two xraptor server processes (one killed with SIGKILL).

With the ``nats-server`` binary the module runs a private server with JetStream
(``-js``); without it, ``XRAPTOR_NATS_URL`` (which must have JetStream enabled).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import nats.js.errors
import pytest
import pytest_asyncio
from nats_support import NatsServer, free_port, nats_binary

from xraptor.antenna import AntennaError
from xraptor.testing import PresenceConformance
from xraptor.testing.presence_server import PresenceProcess, check_presence_across_processes
from xraptor_nats.antenna import NatsAntenna
from xraptor_nats.pull import READ_BATCH

TTL = 1.5


@pytest.fixture(scope="module")
def jetstream_url(request: pytest.FixtureRequest) -> Iterator[str]:
    binary = nats_binary()
    if binary is None:  # XRAPTOR_NATS_URL, or the skip (a failure under CI=true)
        yield request.getfixturevalue("nats_server").url
        return
    with tempfile.TemporaryDirectory(prefix="xraptor-js-") as store:
        server = NatsServer(f"nats://127.0.0.1:{free_port()}", binary, ("-js", "-sd", store))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest_asyncio.fixture
async def bucket(jetstream_url: str) -> AsyncIterator[str]:
    """A presence bucket of the test's own, deleted afterwards."""
    name = f"xrtest_presence_{uuid.uuid4().hex[:12]}"
    yield name
    nc = await nats.connect(jetstream_url)
    try:
        await nc.jetstream().delete_key_value(name)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


class TestNatsPresence(PresenceConformance):
    @pytest.fixture
    def antenna_factory(self, jetstream_url: str, bucket: str) -> Callable[[], NatsAntenna]:
        return lambda: NatsAntenna(servers=jetstream_url, presence_bucket=bucket)


async def test_presence_across_processes_and_a_killed_process_expires(
    jetstream_url: str, bucket: str
) -> None:
    options = {"presence_ttl": TTL, "presence_bucket": bucket}
    with (
        PresenceProcess(jetstream_url, options) as first,
        PresenceProcess(jetstream_url, options) as second,
    ):
        gone, announced = await check_presence_across_processes(first, second, ttl=TTL)
    print(
        f"SIGKILL: member unlisted after {gone:.2f} s, its leave announced after {announced:.2f} s"
    )


async def test_without_jetstream_presence_says_what_is_missing(nats_server: NatsServer) -> None:
    if not nats_server.private:
        pytest.skip("needs a private nats-server without JetStream (XRAPTOR_NATS_URL may have it)")
    async with NatsAntenna(servers=nats_server.url) as antenna:
        with pytest.raises(AntennaError, match="enable JetStream"):
            await antenna.presence_list("room")


def test_the_bucket_name_is_checked() -> None:
    with pytest.raises(ValueError, match="presence_bucket"):
        NatsAntenna(presence_bucket="no.dots")


async def test_a_room_larger_than_a_read_batch_is_read_whole(
    jetstream_url: str, bucket: str
) -> None:
    """A room's members are read through a pull consumer in batches of READ_BATCH: a room
    of two and a half batches comes back whole, removed members (whose keys hold a purge
    marker) left out, and members of another room not mixed in."""
    count = 2 * READ_BATCH + READ_BATCH // 2
    members = {f"conn:{i}": f'{{"i": {i}}}' for i in range(count)}
    async with (
        NatsAntenna(servers=jetstream_url, presence_bucket=bucket) as antenna,
        NatsAntenna(servers=jetstream_url, presence_bucket=bucket) as other,
    ):
        await antenna.presence_set("big", members)
        await antenna.presence_set("beside", {"conn:x": "{}"})
        gone = [f"conn:{i}" for i in range(0, count, 7)]
        await antenna.presence_remove("big", gone)
        listed = await other.presence_list("big")
    expected = {key: info for key, info in members.items() if key not in set(gone)}
    assert listed == expected and len(listed) > 2 * READ_BATCH
