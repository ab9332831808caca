"""``is_alive`` sees the listeners of other processes: the advisory locks in ``pg_locks``.

``pg_listening_channels()`` shows only the calling session's channels; a shared advisory
lock per watched channel, held by the listening session, is what another process can
see, and the server releases it when that session ends, however it ends.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid

from xraptor.testing import eventually
from xraptor_postgres.antenna import PostgresAntenna

WATCHER = textwrap.dedent(
    """
    import asyncio, sys
    from xraptor_postgres.antenna import PostgresAntenna

    async def main(url, channel):
        async with PostgresAntenna(url=url) as antenna, antenna.subscribe(channel):
            print("watching", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_another_process_is_seen_until_it_is_killed(pg_url: str) -> None:
    channel = f"alive-{uuid.uuid4().hex}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WATCHER, pg_url, channel,
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line.strip() == b"watching"
        async with PostgresAntenna(url=pg_url) as antenna:
            assert await antenna.is_alive(channel) is True
            assert await antenna.is_alive(channel + "-not") is False
            process.kill()  # no unwatch, no goodbye: the server ends the session
            await asyncio.wait_for(process.wait(), 10)
            assert await eventually(lambda: _not_alive(antenna, channel), 5.0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _not_alive(antenna: PostgresAntenna, channel: str) -> bool:
    return not await antenna.is_alive(channel)


async def test_two_antennas_see_each_other_and_unwatch_releases(pg_url: str) -> None:
    channel, shared = f"alive-{uuid.uuid4().hex}", f"shared-{uuid.uuid4().hex}"
    async with PostgresAntenna(url=pg_url) as one, PostgresAntenna(url=pg_url) as two:
        async with one.subscribe(channel), one.subscribe(shared), two.subscribe(shared):
            assert await two.is_alive(channel) and await one.is_alive(channel)
        assert not await two.is_alive(channel) and not await one.is_alive(channel)
        assert not await one.is_alive(shared)
        # held by both: released only when both left
        async with one.subscribe(shared):
            async with two.subscribe(shared):
                pass
            assert await two.is_alive(shared)
        assert not await two.is_alive(shared)


async def test_channel_prefixes_keep_apps_apart(pg_url: str) -> None:
    channel = f"room-{uuid.uuid4().hex}"
    async with (
        PostgresAntenna(url=pg_url, channel_prefix="app_one") as one,
        PostgresAntenna(url=pg_url, channel_prefix="app_two") as two,
        PostgresAntenna(url=pg_url, channel_prefix="app_one") as one_again,
        one.subscribe(channel) as sub,
    ):
        assert await one_again.is_alive(channel)
        assert not await two.is_alive(channel)
        await two.post(channel, "other app")
        await one_again.post(channel, "same app")
        assert await asyncio.wait_for(sub.__anext__(), 5) == "same app"


async def test_a_watch_cancelled_after_a_reconnection_listened_releases_it(pg_url: str) -> None:
    """The interleaving of a watch cancelled while waiting for the connection, during a
    reconnection that already listened and locked for it (simulated: the test holds the
    connection's turn and does what the reconnection does): nothing may stay held."""
    channel = f"cancelled-{uuid.uuid4().hex}"
    async with PostgresAntenna(url=pg_url) as antenna, PostgresAntenna(url=pg_url) as other:
        listening = antenna._listening
        identifier, key = antenna._names(channel)
        async with listening._turn:
            opening = asyncio.ensure_future(antenna.subscribe(channel).open())
            await asyncio.sleep(0.05)  # the watch wants the channel and waits for its turn
            connection = listening._connection
            assert connection is not None and listening.watches(identifier, channel)
            await listening._settle_on(connection, identifier, key)  # the "reconnection"
            assert await other.is_alive(channel)
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
        assert await eventually(lambda: _not_alive(other, channel), 5.0)
        assert antenna.watched_channels() == []
