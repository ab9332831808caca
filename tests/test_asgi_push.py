"""AsgiConnection's push path: a push to a connection with nothing queued is written
inline when the ASGI server's ``send`` does not wait; one that waits is finished by a
writer task, with what queues behind it written after it, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.datastructures import Headers

from xraptor.asgi import AsgiConnection
from xraptor.metrics import Metrics

Message = dict[str, Any]


def make_connection(send: Callable[[Message], Awaitable[None]]) -> AsgiConnection:
    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return AsgiConnection(
        {"type": "websocket", "path": "/", "client": ("127.0.0.1", 1)},
        receive,
        send,  # type: ignore[arg-type]
        identity=None,
        headers=Headers(),
        max_buffer=2**20,
        max_size=None,
        metrics=Metrics(),
    )


def texts(sent: list[Message]) -> list[str]:
    return [m["text"] for m in sent if m["type"] == "websocket.send"]


async def test_a_push_is_written_inline_without_a_task() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    connection = make_connection(send)
    tasks = len(asyncio.all_tasks())
    for i in range(3):
        connection.push(f"m{i}".encode())
        assert texts(sent) == [f"m{j}" for j in range(i + 1)]  # written before push returned
    assert len(asyncio.all_tasks()) == tasks
    assert connection.buffered() == 0
    assert connection.metrics.pushes_total == 3


async def test_a_send_that_waits_is_finished_by_a_writer_task_in_order() -> None:
    writable = asyncio.Event()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        await writable.wait()  # as uvicorn's send does while its transport is paused
        sent.append(message)

    connection = make_connection(send)
    connection.push(b"first")
    connection.push(b"second")
    await connection.send(b"answer")  # queued behind the pushes (under HIGH_WATER)
    connection.push(b"third")
    assert sent == [] and connection.buffered() == len(b"secondanswerthird")
    writable.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert texts(sent) == ["first", "second", "answer", "third"]
    assert connection.buffered() == 0
    sent.clear()
    connection.push(b"inline again")
    assert texts(sent) == ["inline again"]


async def test_a_failed_send_ends_the_connection() -> None:
    async def send(message: Message) -> None:
        raise OSError("gone")

    connection = make_connection(send)
    connection.push(b"lost")
    assert not connection.is_open()
    await asyncio.wait_for(connection.wait_closed(), 1)
    connection.push(b"dropped")  # no error, nothing written


async def test_a_send_that_is_not_a_coroutine_is_awaited_by_the_writer() -> None:
    sent: list[str] = []
    loop = asyncio.get_running_loop()

    def send(message: Message) -> asyncio.Future[None]:
        future: asyncio.Future[None] = loop.create_future()
        sent.append(message["text"])
        loop.call_soon(future.set_result, None)
        return future

    connection = make_connection(send)
    connection.push(b"a")
    connection.push(b"b")
    for _ in range(10):
        await asyncio.sleep(0)
    assert sent == ["a", "b"]
    assert connection.buffered() == 0


async def test_an_answer_returns_once_written_while_pushes_keep_coming() -> None:
    """The requesting task writes what is queued up to its own frame, not the pushes
    that arrive behind it (those go to a writer task), so it does not stay busy, and
    in flight, as long as a room keeps pushing."""
    sent: list[str] = []

    async def send(message: Message) -> None:
        for _ in range(3):  # every write waits a little: slower than the pusher
            await asyncio.sleep(0)
        sent.append(message["text"])

    connection = make_connection(send)
    pushing = True

    async def pusher() -> None:
        i = 0
        while pushing:
            connection.push(f"p{i}".encode())
            i += 1
            await asyncio.sleep(0)

    loop = asyncio.get_running_loop()
    answering = loop.create_task(connection.send(b"answer"))  # it writes, and waits
    task = loop.create_task(pusher())  # pushes queue behind the answer meanwhile
    await asyncio.wait_for(answering, 1)  # before: not while the pushes kept coming
    assert sent[0] == "answer" and connection.buffered() > 0
    pushing = False
    await task
    for _ in range(50):
        await asyncio.sleep(0)
    assert connection.buffered() == 0
    assert sent == ["answer"] + [f"p{i}" for i in range(len(sent) - 1)]
