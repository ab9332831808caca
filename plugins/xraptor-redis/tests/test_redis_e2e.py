"""End to end: two xraptor server processes share a private redis-server.

A chat room spans both processes and each member gets each message exactly
once; the rate limit is shared by both; a kill -9 and restart of Redis gives
every stream a gap notice and the room works again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("xraptor.demo", reason="the core server's chat demo is not there yet")

from redis_support import RedisServer, script_process

from xraptor import Client, ClientError
from xraptor.testing import ServerProcess
from xraptor.testing.chat import check_outage_and_recovery, check_room_spans_processes, send

SERVER = Path(__file__).with_name("redis_chat_server.py")


@pytest.fixture
def two_servers(redis_server: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    scope = f"e2e-{time.monotonic_ns()}"
    env = {"XRAPTOR_TEST_LIMIT": "6", "XRAPTOR_TEST_SCOPE": scope}
    with (
        script_process(SERVER, redis_server.url, **env) as first,
        script_process(SERVER, redis_server.url, **env) as second,
    ):
        yield first, second


async def test_room_spans_two_processes_exactly_once(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_servers
    await check_room_spans_processes(first, second, [f"hello {i}" for i in range(10)])
    for server in (first, second):
        assert server.health()["antenna"]["name"] == "redis"


async def test_rate_limit_is_shared_by_both_processes(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_servers
    async with Client(first.url) as a, Client(second.url) as b:
        for i in range(6):
            await send(a if i % 2 else b, "quiet", "carol", f"m{i}", who="carol")
        with pytest.raises(ClientError) as refused:
            await send(a, "quiet", "carol", "one too many", who="carol")
        assert refused.value.code == "rate_limited"
        with pytest.raises(ClientError):
            await send(b, "quiet", "carol", "still too many", who="carol")
        await send(b, "quiet", "dave", "someone else", who="dave")


async def test_redis_restart_gives_gap_notice_and_room_recovers(
    two_servers: tuple[ServerProcess, ServerProcess], redis_server: RedisServer
) -> None:
    first, second = two_servers

    async def outage() -> None:
        redis_server.restart()

    await check_outage_and_recovery(first, second, outage, up_within=5)
