"""End to end: presence across two xraptor server processes sharing a private Redis.

Members of both processes are listed by each; join and leave notices cross from one
process to the other; a disconnect removes its member; a process killed with SIGKILL
(no cleanup at all) disappears from presence within its ``presence_ttl``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from xraptor.testing.presence_server import PresenceProcess, check_presence_across_processes

TTL = 1.5


@pytest.fixture
def two_processes(redis_url: str) -> Iterator[tuple[PresenceProcess, PresenceProcess]]:
    options = {"presence_ttl": TTL, "presence_prefix": f"xrtest:p:{uuid.uuid4().hex[:12]}:"}
    with (
        PresenceProcess(redis_url, options) as first,
        PresenceProcess(redis_url, options) as second,
    ):
        yield first, second


async def test_presence_across_processes_and_a_killed_process_expires(
    two_processes: tuple[PresenceProcess, PresenceProcess],
) -> None:
    gone, announced = await check_presence_across_processes(*two_processes, ttl=TTL)
    print(
        f"SIGKILL: member unlisted after {gone:.2f} s, its leave announced after {announced:.2f} s"
    )
