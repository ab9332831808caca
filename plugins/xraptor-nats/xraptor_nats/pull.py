"""Reading what a JetStream stream holds now, through an ephemeral pull consumer.

Room history (reads after a position) and presence (a room's members) both need "the
messages that match, as stored at this moment, then stop". A pull consumer gives
that exactly: the answer to its creation carries how many messages it has pending,
and nothing is delivered before it is asked for, so the reader knows when it has
everything. (nats-py's key-value ``watch`` signals the end of what is stored from a
consumer-info request made while the server already delivers; when that answer
overtakes a delivery, the watch says "the end" before the entries, and a read of a
room's presence came back empty.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from nats.js.api import AckPolicy, ConsumerConfig

from .errors import ANY_NATS

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

T = TypeVar("T")

#: messages asked for per pull request
READ_BATCH = 1024


async def read_stored(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    config: ConsumerConfig,
    convert: Callable[[Msg], T | None],
    timeout: float,
) -> list[T] | None:
    """What stream ``stream`` holds now for a consumer of ``config`` (its filter and
    deliver policy), each message through ``convert`` (``None``: left out), in stream
    order; ``None`` if fewer messages came than the consumer had pending when it was
    made (JetStream removed some meanwhile). Read in batches of :data:`READ_BATCH`:
    one batch waits in nats-py's buffers at a time.

    :raises nats.errors.Error: JetStream refused the consumer
    :raises TimeoutError: a batch took longer than ``timeout``
    """
    found: list[T] = []
    came = wanted = 0
    ended = False
    batch_done = asyncio.Event()

    async def on_reply(message: Msg) -> None:
        nonlocal came, ended
        if message.headers and message.headers.get("Status"):
            ended = True  # no more messages (404) or the request expired (408)
            batch_done.set()
            return
        came += 1
        value = convert(message)
        if value is not None:
            found.append(value)
        if came >= wanted:
            batch_done.set()

    config.ack_policy = AckPolicy.NONE
    config.mem_storage = True
    config.num_replicas = 1
    # a backstop: the consumer is deleted below
    config.inactive_threshold = max(5.0, 2 * timeout)
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox, cb=on_reply)
    consumer: str | None = None
    try:
        info = await js.add_consumer(stream, config)
        consumer = info.name
        total = info.num_pending or 0
        request = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        while came < total and not ended:
            wanted = min(came + READ_BATCH, total)
            batch_done.clear()
            body = json.dumps({"batch": wanted - came, "no_wait": True}).encode()
            await nc.publish(request, body, reply=inbox)
            async with asyncio.timeout(timeout):
                await batch_done.wait()
        return found if came >= total else None
    finally:
        with contextlib.suppress(*ANY_NATS):
            await replies.unsubscribe()
            if consumer is not None:  # without waiting for the answer
                await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", b"")
