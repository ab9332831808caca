"""The publisher: one task that sends queued publishes in order, pipelined in batches.

Callers only wait on a plain future with ``asyncio.timeout``, so the publish
timeout is a hard bound whatever redis-py does inside (a cancelled redis-py read
can otherwise be held up by its own socket timeouts). A publish whose caller
gave up before it was sent is dropped, not sent late.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xraptor.antenna import AntennaError, AntennaUnavailable

#: publishes per pipeline
BATCH = 256
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

_Item = tuple[str, str, "asyncio.Future[None]"]


class Publisher:
    """Publishes for one antenna over ``client`` (a pooled redis-py client).

    :param where: how error messages name the server (a URL without credentials)
    """

    def __init__(self, client: Redis, *, timeout: float, max_pending: int, where: str) -> None:
        self.client = client
        self.timeout = timeout
        self.max_pending = max_pending
        self.where = where
        self._outbox: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Publishes waiting to be sent."""
        return len(self._outbox)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"xraptor-redis publisher {self.where}"
        )

    async def close(self) -> None:
        """Stop the task; every waiting publish fails with :class:`AntennaError`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._outbox:
            _, _, future = self._outbox.popleft()
            if not future.done():
                future.set_exception(AntennaError("the redis antenna is closed"))
                future.exception()  # retrieved: no "never retrieved" warning

    async def publish(self, channel: str, message: str) -> None:
        """Queue one publish and wait until Redis took it, at most ``timeout`` seconds.

        :raises AntennaUnavailable: Redis did not take it in time, or refused the
            connection, or too many publishes already wait
        """
        if self._task is None:
            raise AntennaError("the redis antenna is not connected")
        if len(self._outbox) >= self.max_pending:
            raise AntennaUnavailable(
                f"{len(self._outbox)} publishes already wait for Redis ({self.where})"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, message, future))
        wake = self._wake
        if not wake.is_set():
            wake.set()
        try:
            async with asyncio.timeout(self.timeout):
                await future
        except TimeoutError:
            raise AntennaUnavailable(
                f"Redis did not take the publish within {self.timeout} s ({self.where})"
            ) from None

    async def _run(self) -> None:
        outbox = self._outbox
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            while outbox:
                batch: list[_Item] = []
                while outbox and len(batch) < BATCH:
                    item = outbox.popleft()
                    if not item[2].done():  # its caller gave up: do not send it late
                        batch.append(item)
                if batch:
                    await self._send(batch)

    async def _send(self, batch: list[_Item]) -> None:
        error: Exception | None = None
        try:
            if len(batch) == 1:
                channel, message, _ = batch[0]
                await self.client.publish(channel, message)
            else:
                pipe = self.client.pipeline(transaction=False)
                for channel, message, _ in batch:
                    pipe.publish(channel, message)
                await pipe.execute()
        except _UNREACHABLE as failure:
            error = AntennaUnavailable(
                f"redis publish failed ({self.where}): {type(failure).__name__}: {failure}"
            )
        except RedisError as failure:
            error = AntennaError(f"redis refused the publish: {failure}")
        for _, _, future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
