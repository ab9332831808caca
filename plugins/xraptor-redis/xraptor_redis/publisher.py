"""The publisher: one task that sends queued publishes in order, pipelined in batches.

A publish to a room with history is a call of the append script instead (see
:mod:`xraptor_redis.history`), queued and pipelined with the plain publishes, so that
a busy history room costs few round trips too; its caller gets the script's answer.

Callers only wait on a plain future with ``asyncio.timeout``, so the publish
timeout is a hard bound whatever redis-py does inside (a cancelled redis-py read
can otherwise be held up by its own socket timeouts). A publish whose caller
gave up before it was sent is dropped, not sent late.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xraptor.antenna import AntennaError, AntennaUnavailable
from xraptor.closing import fail_waiting, stop_tasks

from ._closing import closed

#: publishes per pipeline
BATCH = 256
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

#: a queued publish: ``(channel, message, future, script)``, where ``script`` is
#: ``None`` for a plain ``PUBLISH``, else the keys and arguments of a call of the
#: publisher's script (``channel`` and ``message`` are then unused)
_Item = tuple[str, str, "asyncio.Future[Any]", "tuple[str, ...] | None"]


class Publisher:
    """Publishes for one antenna over ``client`` (a pooled redis-py client).

    :param where: how error messages name the server (a URL without credentials)
    :param script: the Lua source :meth:`call` runs (``EVALSHA``, loaded on ``NOSCRIPT``)
    :param script_keys: how many of a call's strings are the script's keys
    """

    def __init__(
        self,
        client: Redis,
        *,
        timeout: float,
        max_pending: int,
        where: str,
        script: str | None = None,
        script_keys: int = 0,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.max_pending = max_pending
        self.where = where
        self._script = script
        self._script_keys = script_keys
        self._sha = "" if script is None else hashlib.sha1(script.encode()).hexdigest()
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
        await stop_tasks(task)
        fail_waiting((item[2] for item in self._outbox), closed)
        self._outbox.clear()

    async def publish(self, channel: str, message: str) -> None:
        """Queue one publish and wait until Redis took it, at most ``timeout`` seconds.

        :raises AntennaUnavailable: Redis did not take it in time, or refused the
            connection, or too many publishes already wait
        """
        await self._queue(channel, message, None)

    async def call(self, keys_and_args: tuple[str, ...]) -> Any:
        """Queue one call of the script (its ``script_keys`` keys first, then its
        arguments) and return its answer, within ``timeout`` seconds.

        :raises AntennaUnavailable: as :meth:`publish`
        :raises AntennaError: Redis refused the script (its error says why)
        """
        return await self._queue("", "", keys_and_args)

    async def _queue(self, channel: str, message: str, script: tuple[str, ...] | None) -> Any:
        if self._task is None:
            raise AntennaError("the redis antenna is not connected")
        if len(self._outbox) >= self.max_pending:
            raise AntennaUnavailable(
                f"{len(self._outbox)} publishes already wait for Redis ({self.where})"
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, message, future, script))
        wake = self._wake
        if not wake.is_set():
            wake.set()
        try:
            async with asyncio.timeout(self.timeout):
                return await future
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
        results: list[Any] = []
        try:
            if len(batch) == 1 and batch[0][3] is None:
                channel, message, _, _ = batch[0]
                await self.client.publish(channel, message)
                results = [None]
            else:
                results = await self._pipeline(batch)
                again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if again and self._script is not None:
                    # Redis lost its script cache (a restart): those calls did not run,
                    # and are sent again, in their order, once the script is loaded
                    await self.client.script_load(self._script)
                    retried = await self._pipeline([batch[i] for i in again])
                    for i, result in zip(again, retried, strict=True):
                        results[i] = result
        except _UNREACHABLE as failure:
            error = AntennaUnavailable(
                f"redis publish failed ({self.where}): {type(failure).__name__}: {failure}"
            )
        except RedisError as failure:
            error = AntennaError(f"redis refused the publish: {failure}")
        for i, (_, _, future, _) in enumerate(batch):
            if future.done():
                continue
            result = error if error is not None else results[i]
            if isinstance(result, Exception):
                if not isinstance(result, AntennaError):
                    result = AntennaError(f"redis refused the publish: {result}")
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _pipeline(self, batch: list[_Item]) -> list[Any]:
        """Send ``batch`` as one pipeline; each command's answer, or the error Redis
        gave it."""
        pipe = self.client.pipeline(transaction=False)
        for channel, message, _, script in batch:
            if script is None:
                pipe.publish(channel, message)
            else:
                pipe.evalsha(self._sha, self._script_keys, *script)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
