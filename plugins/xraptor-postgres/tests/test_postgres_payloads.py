"""Payloads NOTIFY cannot carry as they are: NUL, lone surrogates, 7999 bytes and more.

The frames (xraptor_postgres.frames) escape and chunk them; these tests send them through
a real server, at the sizes around the limit and across chunk boundaries inside
multi-byte characters, and check what a receiver does with what it cannot use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from pg_support import PostgresCluster

from xraptor import AntennaUnavailable, MessageTooLarge
from xraptor.antenna import Subscription
from xraptor_postgres import frames
from xraptor_postgres.antenna import PostgresAntenna

TRICKY = [
    "",
    "\x00",
    "a\x00b\x00",
    "\\",
    "\\0",
    "\\\\0\\u0041",
    "\\u",
    "olá 🦖 — 中文",
    "lone \ud800 surrogate \udfff",
    "\\\ud83d",
]


@pytest.mark.parametrize("text", TRICKY)
def test_escape_gives_postgres_text_and_is_undone(text: str) -> None:
    escaped = frames.escape(text)
    assert "\x00" not in escaped
    escaped.encode("utf-8")  # valid UTF-8: no lone surrogate left
    assert frames.unescape(escaped) == text


def test_identifiers_fit_postgres_and_differ() -> None:
    long_names = ["x" * 5000 + "a", "x" * 5000 + "b", "\U0001f996" * 2000]
    identifiers = {frames.identifier("xraptor", name) for name in long_names}
    assert len(identifiers) == 3
    assert all(len(i.encode()) <= 63 and i.startswith("xraptor_") for i in identifiers)
    assert frames.identifier("app1", "room") != frames.identifier("app2", "room")
    assert frames.lock_key("app1", "room") != frames.lock_key("app2", "room")
    assert all(-(2**63) <= frames.lock_key("p", n) < 2**63 for n in long_names)


@pytest_asyncio.fixture
async def pair(pg_url: str) -> AsyncIterator[tuple[PostgresAntenna, PostgresAntenna]]:
    async with PostgresAntenna(url=pg_url) as receiver, PostgresAntenna(url=pg_url) as sender:
        yield receiver, sender


def _channel() -> str:
    return f"payloads-{uuid.uuid4().hex}"


async def _next(sub: Subscription, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(sub.__anext__(), timeout)


def _sizes_around_the_limit(channel: str) -> list[str]:
    """Messages whose single frame is 7997 to 8001 bytes, and 2 and 3 chunks' worth."""
    overhead = len(frames.body(frames.escape(channel), "")) + len("m0:")
    found = [("s" * (frames.PAYLOAD_LIMIT - overhead + delta)) for delta in (-2, -1, 0, 1, 2)]
    found += ["t" * (frames.PIECE_SIZE * 2), "u" * (frames.PIECE_SIZE * 3 + 17)]
    return found


async def test_sizes_around_the_notify_limit(pair: tuple[PostgresAntenna, PostgresAntenna]) -> None:
    receiver, sender = pair
    channel = _channel()
    messages = _sizes_around_the_limit(channel)
    async with receiver.subscribe(channel) as sub:
        for message in messages:
            await sender.post(channel, message)
        for message in messages:
            assert await _next(sub) == message


async def test_nul_surrogates_and_multibyte_characters_across_chunk_boundaries(
    pair: tuple[PostgresAntenna, PostgresAntenna],
) -> None:
    receiver, sender = pair
    channel = "room \x00 🦖 " + _channel()
    messages = [*TRICKY]
    # pieces are cut at byte counts: put 2-, 3- and 4-byte characters (and escapes)
    # at every offset around the cuts
    for char in ("é", "中", "🦖", "\x00", "\\", "\ud800"):
        for shift in range(4):
            messages.append("a" * shift + char * 9000)
    messages.append(("x" * 7000 + "\x00") * 40)
    async with receiver.subscribe(channel) as sub:
        for message in messages:
            await sender.post(channel, message)
        for message in messages:
            assert await _next(sub) == message


async def test_concurrent_large_posts_from_two_senders_are_each_whole(pg_url: str) -> None:
    channel = _channel()
    async with (
        PostgresAntenna(url=pg_url) as receiver,
        PostgresAntenna(url=pg_url) as one,
        PostgresAntenna(url=pg_url) as two,
        receiver.subscribe(channel) as sub,
    ):
        sent = [f"{who}{i}:" + who * (20_000 + i) for i in range(20) for who in "ab"]
        await asyncio.gather(
            *((one if message[0] == "a" else two).post(channel, message) for message in sent)
        )
        received = [await _next(sub) for _ in sent]
        assert sorted(received) == sorted(sent)
        for who in "ab":  # each sender's in the order of its calls
            assert [m for m in received if m[0] == who] == [m for m in sent if m[0] == who]


async def test_equal_messages_in_one_batch_are_all_delivered(
    pair: tuple[PostgresAntenna, PostgresAntenna],
) -> None:
    """PostgreSQL delivers identical notifications of one transaction once; the frames'
    message numbers keep equal posts distinct."""
    receiver, sender = pair
    channel = _channel()
    async with receiver.subscribe(channel) as sub:
        await asyncio.gather(*(sender.post(channel, "same") for _ in range(50)))
        assert [await _next(sub) for _ in range(50)] == ["same"] * 50
        await sender.post(channel, "end")
        assert await _next(sub) == "end"


async def test_messages_over_max_message_size_are_refused(pg_url: str) -> None:
    channel = _channel()
    async with (
        PostgresAntenna(url=pg_url, max_message_size=100_000) as sender,
        sender.subscribe(channel) as sub,
    ):
        with pytest.raises(MessageTooLarge, match="max_message_size"):
            await sender.post(channel, "x" * 100_001)
        await sender.post(channel, "x" * 99_000)
        assert await _next(sub) == "x" * 99_000


async def test_a_receiver_drops_what_is_over_its_own_limit_and_goes_on(pg_url: str) -> None:
    channel = _channel()
    async with (
        PostgresAntenna(url=pg_url, max_message_size=20_000) as receiver,
        PostgresAntenna(url=pg_url) as sender,
        receiver.subscribe(channel) as sub,
    ):
        await sender.post(channel, "big" * 30_000)
        await sender.post(channel, "small")
        assert await _next(sub) == "small"
        assert receiver.describe()["dropped_chunked_messages"] == 1


async def test_foreign_notifications_are_ignored(
    pair: tuple[PostgresAntenna, PostgresAntenna], pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A NOTIFY on a channel's identifier that is not a frame is logged and skipped; a
    frame naming another channel (what a hash collision would look like) is not
    delivered to this one: the payload's channel name decides."""
    receiver, sender = pair
    channel, other = _channel(), _channel()
    identifier = frames.identifier(receiver.prefix, channel)
    async with receiver.subscribe(channel) as sub:
        connection = await asyncpg.connect(pg_url)
        try:
            with caplog.at_level(logging.WARNING, "xraptor_postgres"):
                await connection.execute("SELECT pg_notify($1, 'hello from psql')", identifier)
                await connection.execute(
                    "SELECT pg_notify($1, $2)",
                    identifier,
                    "m1:" + frames.body(frames.escape(other), "not yours"),
                )
                await sender.post(channel, "yours")
                assert await _next(sub) == "yours"
        finally:
            await connection.close()
    assert "not an xraptor notification" in caplog.text


SQL_PUSH = """
SELECT pg_notify(
    $1 || '_' || left(encode(sha256(convert_to($1 || ':' || $2, 'UTF8')), 'hex'), 32),
    'm0:' || length(replace($2, E'\\\\', E'\\\\\\\\')) || ':'
        || replace($2, E'\\\\', E'\\\\\\\\') || replace($3, E'\\\\', E'\\\\\\\\')
)
"""


async def test_sql_can_push_to_a_channel_as_the_readme_shows(pg_url: str) -> None:
    """The identifier and the frame are plain enough for SQL (a trigger, a job) to send."""
    channel = f"from sql \\ {_channel()} é"
    message = 'a row changed: {"id": 7, "path": "C:\\\\tmp"} 🦖'
    async with PostgresAntenna(url=pg_url) as antenna, antenna.subscribe(channel) as sub:
        connection = await asyncpg.connect(pg_url)
        try:
            await connection.execute(SQL_PUSH, antenna.prefix, channel, message)
        finally:
            await connection.close()
        assert await _next(sub) == message
    assert frames.lock_key("xraptor", channel) == int.from_bytes(
        bytes.fromhex(frames.identifier("xraptor", channel)[len("xraptor_") :])[:8],
        "big",
        signed=True,
    )


async def test_posts_waiting_for_a_stalled_server_are_bounded_in_size(
    private_pg: PostgresCluster,
) -> None:
    """While the publishing session is frozen (SIGSTOP on its server process), posts
    queue up to ``max_pending_size`` characters; the next one fails at once."""
    channel = _channel()
    antenna = PostgresAntenna(url=private_pg.url(), publish_timeout=1, max_pending_size=100_000)
    async with antenna, antenna.subscribe(channel) as sub:
        await antenna.post(channel, "warm")  # opens the publishing connection
        assert await _next(sub) == "warm"
        connection = antenna._link._connection
        assert connection is not None
        pid = connection.get_server_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            in_flight = asyncio.ensure_future(antenna.post(channel, "a" * 60_000))
            await asyncio.sleep(0.1)  # taken by the publisher task, stuck at the server
            queued = asyncio.ensure_future(antenna.post(channel, "b" * 60_000))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(AntennaUnavailable, match="already wait"):
                await antenna.post(channel, "c" * 60_000)
            assert time.monotonic() - started < 0.5
            first, second = await asyncio.gather(in_flight, queued, return_exceptions=True)
            assert isinstance(first, AntennaUnavailable), first  # its statement timed out
            # the publisher then cut the stuck connection and opened another: the queued
            # post may make its own deadline on it
            assert second is None or isinstance(second, AntennaUnavailable), second
        finally:
            os.kill(pid, signal.SIGCONT)
        await antenna.post(channel, "after")  # a new connection (the stuck one was cut)
        while (message := await _next(sub)) != "after":
            assert message in ("a" * 60_000, "b" * 60_000)  # at most once
