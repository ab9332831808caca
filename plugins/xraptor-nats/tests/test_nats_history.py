"""Room history on JetStream: the history conformance suite, and what NATS adds to it
(streams per policy, the subjects other services use, outages of the server).

The suite runs on a private ``nats-server -js`` with a store directory of its own
when the binary is there, else on ``XRAPTOR_NATS_URL`` (which must have JetStream);
every test's subject prefix is its own (conftest), so are its streams, and the
streams a test made are deleted after it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import pytest
import pytest_asyncio
from nats_support import NatsServer, jetstream_server, shared_url_or_skip

from xraptor import AntennaUnavailable
from xraptor.history import HistoryEntry, HistoryPolicy, Position
from xraptor.testing import HistoryConformance
from xraptor_nats.antenna import NatsAntenna
from xraptor_nats.history import default_stream_prefix
from xraptor_nats.republish import Republished
from xraptor_nats.subjects import channel_token


@pytest.fixture(scope="module")
def jetstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = jetstream_server(tmp_path_factory.mktemp("jetstream"))
    if server is None:
        yield shared_url_or_skip()
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
    # a stream sequence that is not the room's cannot be read after (JetStream does not
    # tell the room's removed messages from ones never published)
    newest_of_empty_history = False

    @pytest.fixture
    def antenna_factory(self, jetstream_url: str, own_streams: str) -> Callable[[], NatsAntenna]:
        return lambda: NatsAntenna(servers=jetstream_url)


class Recorder:
    """A hub listener that records messages with their positions, and gap notices."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[str, Position | None]] = asyncio.Queue()
        self.gaps = 0

    def on_message(self, channel: str, message: str) -> None:
        self.received.put_nowait((message, None))

    def on_message_at(self, channel: str, message: str, position: Position) -> None:
        self.received.put_nowait((message, position))

    def on_gap(self, channel: str) -> None:
        self.gaps += 1

    async def next(self, timeout: float = 5.0) -> tuple[str, Position | None]:
        return await asyncio.wait_for(self.received.get(), timeout)


def room() -> str:
    return f"room-{uuid.uuid4().hex[:10]}"


async def test_a_stream_per_policy_with_its_limits(jetstream_url: str, own_streams: str) -> None:
    async with (
        NatsAntenna(servers=jetstream_url) as antenna,
        NatsAntenna(servers=jetstream_url) as other,
    ):
        prefix = antenna.subject_prefix
        first = await antenna.publish_with_history(room(), "a", HistoryPolicy(5, 2.5))
        again = await other.publish_with_history(room(), "b", HistoryPolicy(5, 2.5))  # idempotent
        await antenna.publish_with_history(room(), "c", HistoryPolicy(7))
        assert first.epoch == again.epoch == "5-2500-" + first.epoch.rsplit("-", 1)[1]
        assert again.offset > first.offset
        nc = await nats.connect(jetstream_url)
        try:
            js = nc.jetstream()
            timed = await js.stream_info(f"{own_streams}_5_2500")
            kept = await js.stream_info(f"{own_streams}_7_0")
        finally:
            await nc.close()
    assert timed.config.subjects == [f"{prefix}.h.5_2500.*"]
    assert timed.config.max_msgs_per_subject == 5 and timed.config.max_age == 2.5
    assert timed.config.discard == "old" and timed.config.storage == "file"
    assert timed.config.republish is not None
    assert timed.config.republish.dest == f"{prefix}.ch.{{{{wildcard(1)}}}}"
    assert kept.config.max_msgs_per_subject == 7 and not kept.config.max_age
    assert timed.state.messages == 2 and kept.state.messages == 1


async def test_other_services_use_the_documented_subjects(
    jetstream_url: str, own_streams: str
) -> None:
    """A service publishes into a history room with JetStream on ``P.h.<size>_<ttl>.<token>``
    and reads its messages, with their sequence, on ``P.ch.<token>`` like any room's."""
    channel, policy = room(), HistoryPolicy(10)
    token = channel_token(channel)
    async with NatsAntenna(servers=jetstream_url) as antenna:
        prefix = antenna.subject_prefix
        first = await antenna.publish_with_history(channel, "from xraptor", policy)
        recorder = Recorder()
        await antenna.listen(channel, recorder)
        nc = await nats.connect(jetstream_url)
        try:
            seen = await nc.subscribe(f"{prefix}.ch.{token}")
            await nc.flush()
            ack = await nc.jetstream().publish(f"{prefix}.h.10_0.{token}", b"from a service")
            await nc.publish(f"{prefix}.ch.{token}", b"not stored")  # the old way: live only
            assert await recorder.next() == ("from a service", Position(first.epoch, ack.seq))
            assert await recorder.next() == ("not stored", None)
            outside = await seen.next_msg(timeout=5)
            assert outside.data == b"from a service"
            assert outside.headers is not None
            assert outside.headers["Nats-Sequence"] == str(ack.seq)
            assert outside.headers["Nats-Last-Sequence"] == str(first.offset)
        finally:
            await nc.close()
            await antenna.unlisten(channel, recorder)
        assert await antenna.read_history(channel, first) == [
            HistoryEntry(Position(first.epoch, ack.seq), "from a service")
        ]


async def test_rooms_without_history_store_nothing(jetstream_url: str, own_streams: str) -> None:
    channel = room()
    async with NatsAntenna(servers=jetstream_url) as antenna:
        antenna.set_history(lambda name: HistoryPolicy(3) if name.startswith("kept") else None)
        recorder = Recorder()
        await antenna.listen(channel, recorder)
        try:
            await antenna.post(channel, "plain")
            assert await recorder.next() == ("plain", None)
        finally:
            await antenna.unlisten(channel, recorder)
        assert await delete_streams(jetstream_url, own_streams) == []
        kept = f"kept-{channel}"
        await antenna.listen(kept, recorder)
        try:
            await antenna.post(kept, "stored")
            message, position = await recorder.next()
            assert message == "stored" and position is not None
        finally:
            await antenna.unlisten(kept, recorder)


async def test_a_position_of_another_policy_is_not_recovered(
    jetstream_url: str, own_streams: str
) -> None:
    """A room configured anew (another size) moved to another stream: a position of
    the old one would miss what the new one got, so it is not recovered."""
    channel = room()
    async with NatsAntenna(servers=jetstream_url) as antenna:
        old = await antenna.publish_with_history(channel, "old", HistoryPolicy(5))
        await antenna.publish_with_history(channel, "old 2", HistoryPolicy(5))
        assert await antenna.read_history(channel, old) is not None
        antenna.set_history(lambda name: HistoryPolicy(50))
        assert await antenna.read_history(channel, old) is None


async def test_bad_input_is_refused_clearly(jetstream_url: str, own_streams: str) -> None:
    for options, words in (
        ({"history_storage": "disk"}, "history_storage"),
        ({"history_storage": ["file"]}, "history_storage"),
        ({"history_replicas": "3"}, "history_replicas"),
        ({"history_replicas": 0}, "history_replicas"),
        ({"history_stream_prefix": "a.b"}, "history_stream_prefix"),
        ({"history_stream_prefix": "a b"}, "history_stream_prefix"),
    ):
        with pytest.raises(ValueError, match=words):
            NatsAntenna(servers=jetstream_url, **options)
    async with NatsAntenna(servers=jetstream_url) as antenna:
        with pytest.raises(ValueError, match="history_size"):
            await antenna.publish_with_history(room(), "x", HistoryPolicy(2**63))
        with pytest.raises(ValueError, match="max_age"):
            await antenna.publish_with_history(room(), "x", HistoryPolicy(3, 1e13))
        assert await antenna.read_history(room(), Position("no-such-epoch", 1)) is None


async def test_history_needs_jetstream(private_nats: NatsServer) -> None:
    """A server without JetStream (the plugin's usual test server): a clear error says so."""
    async with NatsAntenna(servers=private_nats.url) as antenna:
        with pytest.raises(AntennaUnavailable, match="nats-server -js"):
            await antenna.publish_with_history(room(), "x", HistoryPolicy(3))
        with pytest.raises(AntennaUnavailable, match="nats-server -js"):
            await antenna.read_history(room(), Position("3-0-0123abcd", 1))


def republication(stream: str, seq: int, last: int, subject: str) -> dict[str, str]:
    """The headers JetStream republishes message ``seq`` of ``stream`` with."""
    return {
        "Nats-Stream": stream,
        "Nats-Subject": subject,
        "Nats-Sequence": str(seq),
        "Nats-Last-Sequence": str(last),
    }


async def tracker_of(
    antenna: NatsAntenna, channel: str, policy: HistoryPolicy
) -> tuple[Republished, str, str]:
    """A republication tracker of ``channel`` (not fed by a subscription: the test hands
    it republications), its stream and its subject."""
    jetstream = antenna._jetstream
    assert jetstream is not None
    await jetstream.ensure(policy)
    stream = jetstream.stream_of(channel, policy)
    assert stream is not None
    tracker = Republished(jetstream, antenna)
    await tracker.watching(channel, policy)
    return tracker, stream, jetstream.subject(policy, channel_token(channel))


async def test_republications_that_overtook_others_are_put_in_order(
    jetstream_url: str, own_streams: str
) -> None:
    """A republication whose predecessor has not come yet (the server does not keep
    them in order across publishing connections) is preceded by the messages it
    overtook, read from the stream; their late copies are dropped; a hole that was
    trimmed meanwhile is a gap."""
    channel, policy = room(), HistoryPolicy(2)
    async with NatsAntenna(servers=jetstream_url) as antenna:
        tracker, stream, subject = await tracker_of(antenna, channel, policy)
        p1, p2, p3 = [await antenna.publish_with_history(channel, m, policy) for m in "abc"]
        s1, s2, s3 = p1.offset, p2.offset, p3.offset
        # c overtook a and b (the stream keeps 2 messages: a is gone already)
        entries, gap = await tracker.receive(channel, b"c", republication(stream, s3, s2, subject))
        assert entries == [HistoryEntry(p2, "b"), HistoryEntry(p3, "c")] and not gap
        # b's own copy comes late: dropped
        assert await tracker.receive(channel, b"b", republication(stream, s2, s1, subject)) == (
            [],
            False,
        )
        p4 = await antenna.publish_with_history(channel, "d", policy)
        assert await tracker.receive(
            channel, b"d", republication(stream, p4.offset, s3, subject)
        ) == (
            [HistoryEntry(p4, "d")],
            False,
        )
        # e, f, g published; g arrives first; e is trimmed (2 kept) before it is read
        _, p6, p7 = [await antenna.publish_with_history(channel, m, policy) for m in "efg"]
        entries, gap = await tracker.receive(
            channel, b"g", republication(stream, p7.offset, p6.offset, subject)
        )
        assert entries == [HistoryEntry(p6, "f"), HistoryEntry(p7, "g")] and gap

    # a long hole (40 messages): the first few read one by one, the rest in one batch
    channel, policy = room(), HistoryPolicy(100)
    async with NatsAntenna(servers=jetstream_url) as antenna:
        tracker, stream, subject = await tracker_of(antenna, channel, policy)
        first = await antenna.publish_with_history(channel, "first", policy)
        assert await tracker.receive(
            channel, b"first", republication(stream, first.offset, 0, subject)
        ) == ([HistoryEntry(first, "first")], False)
        held = [await antenna.publish_with_history(channel, f"m{i}", policy) for i in range(40)]
        entries, gap = await tracker.receive(
            channel, b"m39", republication(stream, held[-1].offset, held[-2].offset, subject)
        )
        assert entries == [HistoryEntry(held[i], f"m{i}") for i in range(40)] and not gap


async def test_concurrent_publishers_reach_every_process_in_one_order(
    jetstream_url: str, own_streams: str
) -> None:
    channel, policy = room(), HistoryPolicy(1000)
    publishers = [NatsAntenna(servers=jetstream_url) for _ in range(3)]
    watchers = [NatsAntenna(servers=jetstream_url) for _ in range(2)]
    for antenna in publishers + watchers:
        antenna.set_history(lambda name: policy)
        await antenna.start()
    try:
        recorders = [Recorder() for _ in watchers]
        for antenna, recorder in zip(watchers, recorders, strict=True):
            await antenna.listen(channel, recorder)

        async def publish(antenna: NatsAntenna, name: str) -> None:
            for i in range(150):
                await antenna.post(channel, f"{name}{i}")

        await asyncio.gather(*(publish(a, f"p{n}-") for n, a in enumerate(publishers)))
        received = [[await r.next() for _ in range(450)] for r in recorders]
        assert received[0] == received[1]
        offsets = [position.offset for _, position in received[0] if position is not None]
        assert len(offsets) == 450 and offsets == sorted(set(offsets))
        assert all(r.gaps == 0 for r in recorders)
    finally:
        for antenna in publishers + watchers:
            await antenna.close()


async def wait_state(antenna: NatsAntenna, state: str) -> None:
    async with asyncio.timeout(15):
        while antenna.connection_state != state:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("storage", ["file", "memory"])
async def test_history_across_a_server_restart(private_jetstream: NatsServer, storage: str) -> None:
    """kill -9 and a restart of nats-server: the room's listener gets a gap notice and
    live messages with positions again; with file storage the history and its epoch
    survive (recovery reaches across the outage), with memory storage they do not (a
    new epoch: old positions are not recovered)."""
    channel, policy = room(), HistoryPolicy(100)
    options = {"servers": private_jetstream.url, "history_storage": storage}
    async with NatsAntenna(**options) as antenna:
        antenna.set_history(lambda name: policy)
        recorder = Recorder()
        await antenna.listen(channel, recorder)
        before = [await antenna.publish_with_history(channel, f"m{i}", policy) for i in range(3)]
        assert [await recorder.next() for _ in range(3)] == [(f"m{i}", before[i]) for i in range(3)]
        private_jetstream.kill()
        await wait_state(antenna, "down")
        with pytest.raises(AntennaUnavailable):
            await antenna.read_history(channel, before[0])
        private_jetstream.restart()
        await wait_state(antenna, "up")
        async with asyncio.timeout(10):
            while recorder.gaps == 0:
                await asyncio.sleep(0.05)
        after = await antenna.publish_with_history(channel, "after", policy)
        assert await recorder.next() == ("after", after)
        history = await antenna.read_history(channel, before[0])
        if storage == "file":
            assert after.epoch == before[0].epoch and after.offset > before[-1].offset
            assert history == [
                HistoryEntry(before[1], "m1"),
                HistoryEntry(before[2], "m2"),
                HistoryEntry(after, "after"),
            ]
        else:
            assert after.epoch != before[0].epoch
            assert history is None
            assert await antenna.read_history(channel, after) == []


class CuttableProxy:
    """A TCP proxy to a NATS server whose connections the test can cut (and refuse for
    a while): one process losing its connection while the server and others go on."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = False
        self._pipes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._pipes.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        self.refusing = True
        for writer in self._pipes:
            writer.transport.abort()
        self._pipes.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_what_others_published_while_this_connection_was_down_is_delivered(
    private_jetstream: NatsServer,
) -> None:
    """This process loses its connection (a cut proxy) while another publishes: once
    back, it tells its listeners of the gap, and its next message of the room brings
    the ones stored meanwhile first, read from the stream, in order."""
    channel, policy = room(), HistoryPolicy(500)
    proxy = CuttableProxy(private_jetstream.port)
    url = await proxy.start()
    try:
        async with (
            NatsAntenna(servers=url, reconnect_time_wait=0.1) as watcher,
            NatsAntenna(servers=private_jetstream.url) as publisher,
        ):
            for antenna in (watcher, publisher):
                antenna.set_history(lambda name: policy)
            recorder = Recorder()
            await watcher.listen(channel, recorder)
            before = await publisher.publish_with_history(channel, "before", policy)
            assert await recorder.next() == ("before", before)
            proxy.cut()
            await wait_state(watcher, "down")
            meanwhile = [
                await publisher.publish_with_history(channel, f"m{i}", policy) for i in range(30)
            ]
            proxy.refusing = False
            await wait_state(watcher, "up")
            async with asyncio.timeout(10):
                while recorder.gaps == 0:
                    await asyncio.sleep(0.02)
            after = await publisher.publish_with_history(channel, "after", policy)
            got = [await recorder.next() for _ in range(31)]
            assert got == [(f"m{i}", meanwhile[i]) for i in range(30)] + [("after", after)]
    finally:
        await proxy.close()


async def test_streams_made_by_hand_are_updated_or_refused_clearly(
    jetstream_url: str, own_streams: str
) -> None:
    """A history stream that exists with other settings is updated when JetStream can
    (here its description), else refused with what to do; subjects that another stream
    already captures are refused too."""
    from nats.js.api import RePublish, StorageType, StreamConfig

    from xraptor import AntennaError

    async with NatsAntenna(servers=jetstream_url) as antenna:
        prefix = antenna.subject_prefix
        nc = await nats.connect(jetstream_url)
        try:
            js = nc.jetstream()
            await js.add_stream(
                StreamConfig(
                    name=f"{own_streams}_4_0",
                    subjects=[f"{prefix}.h.4_0.*"],
                    description="made by hand",
                    max_msgs_per_subject=4,
                    storage=StorageType.FILE,
                    republish=RePublish(
                        src=f"{prefix}.h.4_0.*", dest=f"{prefix}.ch.{{{{wildcard(1)}}}}"
                    ),
                )
            )
            await antenna.publish_with_history(room(), "x", HistoryPolicy(4))
            updated = await js.stream_info(f"{own_streams}_4_0")
            assert updated.config.description != "made by hand"
            await js.add_stream(
                StreamConfig(name=f"{own_streams}_OTHER", subjects=[f"{prefix}.h.6_0.*"])
            )
        finally:
            await nc.close()
    async with NatsAntenna(servers=jetstream_url, history_storage="memory") as antenna:
        with pytest.raises(AntennaError, match="delete it or set another history_stream_prefix"):
            await antenna.publish_with_history(room(), "x", HistoryPolicy(4))
        with pytest.raises(AntennaError, match="another stream captures its subjects"):
            await antenna.publish_with_history(room(), "x", HistoryPolicy(6))


async def test_an_overlap_that_clears_at_once_is_waited_out(
    jetstream_url: str, own_streams: str
) -> None:
    """Processes creating one history stream at once can be told that its subjects
    overlap with an existing stream (the one another of them is making): a publish
    that meets an overlap which ends within a moment stores its message."""
    from nats.js.api import StreamConfig

    async with NatsAntenna(servers=jetstream_url) as antenna:
        nc = await nats.connect(jetstream_url)
        try:
            js = nc.jetstream()
            subjects = [f"{antenna.subject_prefix}.h.8_0.*"]
            await js.add_stream(StreamConfig(name=f"{own_streams}_MAKING", subjects=subjects))
            publishing = asyncio.ensure_future(
                antenna.publish_with_history(room(), "x", HistoryPolicy(8))
            )
            await asyncio.sleep(0.1)
            assert not publishing.done()  # waiting for the overlap to end
            await js.delete_stream(f"{own_streams}_MAKING")
            position = await asyncio.wait_for(publishing, 5)
            stored = await js.stream_info(f"{own_streams}_8_0")
        finally:
            await nc.close()
    assert position.offset == 1 and stored.state.messages == 1
