"""nats-py's outgoing buffer, kept bounded: a publish waits (a bounded time) for room."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from xraptor.antenna import AntennaUnavailable, MessageTooLarge

if TYPE_CHECKING:
    from nats.aio.client import Client


class Outgoing:
    """The antenna's writes into nats-py's buffer of ``pending_size`` bytes.

    :param timeout: seconds a write may wait for room (``publish_timeout``)
    :param where: the servers, as errors name them
    """

    def __init__(self, pending_size: int, timeout: float, where: str) -> None:
        self.pending_size = pending_size
        self.timeout = timeout
        self.where = where

    async def encode(self, nc: Client, message: str, extra: int) -> bytes:
        """``message`` as bytes, once the buffer has room for it and ``extra`` bytes more.

        :raises MessageTooLarge: over the server's ``max_payload``
        :raises AntennaUnavailable: no room within ``timeout``
        """
        data = message.encode("utf-8", "surrogatepass")
        if len(data) > nc.max_payload:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds the NATS server's max_payload "
                f"({nc.max_payload} bytes)"
            )
        need = len(data) + extra + 32
        if nc.pending_data_size + need > self.pending_size:
            await self.room(nc, need)
        return data

    async def room(self, nc: Client, need: int) -> None:
        """Wait, at most ``timeout``, until the buffer has room for ``need`` bytes.

        nats-py itself would wait for its flusher without bound when the buffer is
        full (and swallows the cancellation a timeout sends), so a server that
        stopped reading would make publishes pile up in memory. Polling is crude,
        but this path runs only while the socket cannot keep up.

        :raises AntennaUnavailable: no room in time, or the connection is down
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while nc.pending_data_size + need > self.pending_size:
            if not nc.is_connected or loop.time() >= deadline:
                raise AntennaUnavailable(
                    f"NATS at {self.where} is not taking messages: "
                    f"{nc.pending_data_size} bytes still waiting after {self.timeout} s"
                )
            await asyncio.sleep(0.005)
