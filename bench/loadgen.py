"""The load generator: one process, picows on uvloop (or the websockets client as a fallback).

``python bench/loadgen.py rr|fanout|idle|mixed --url ws://127.0.0.1:P --wire framework|raw|sio ...``

It talks to the orchestrator (``bench/run.py``) over stdin/stdout, one line each:
it prints ``READY`` once connected and warmed up, waits for ``GO``, measures,
prints ``RESULT {json}``, then waits for ``STOP`` (or end of input) and closes.
Every phase is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from common import MARK, PROBE_BASE, ROOM, fanout_text, raise_nofile, run_loop

Handler = Callable[[bytes], None]


def _ignore(data: bytes) -> None:
    return None


class Conn(Protocol):
    handler: Handler

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


# ----- clients --------------------------------------------------------------------


async def connect_picows(url: str) -> Conn:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    class PicowsConn(WSListener):
        def __init__(self) -> None:
            self.handler: Handler = _ignore
            self.transport: WSTransport | None = None
            #: False: the handler only counts frames (their bytes are not copied)
            self.needs_data = True

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            kind = frame.msg_type
            if kind == WSMsgType.TEXT or kind == WSMsgType.BINARY:
                self.handler(frame.get_payload_as_bytes() if self.needs_data else b"")
            elif kind == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def send(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.send(WSMsgType.TEXT, data)

        def close(self) -> None:
            if self.transport is not None and not self.transport.is_disconnected:
                self.transport.send_close(WSCloseCode.OK)
                self.transport.disconnect()

    _, listener = await ws_connect(PicowsConn, url, websocket_handshake_timeout=20)
    assert isinstance(listener, PicowsConn)
    return listener


class WebsocketsConn:
    """The fallback client (the ``websockets`` package): slower, always installed."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.handler: Handler = _ignore
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            while True:
                data = await self.ws.recv(decode=False)
                self.handler(data)

    def send(self, data: bytes) -> None:
        import websockets

        websockets.broadcast([self.ws], data.decode())

    def close(self) -> None:
        self._task.cancel()
        asyncio.get_running_loop().create_task(self.ws.close())


async def connect_websockets(url: str) -> Conn:
    from websockets.asyncio.client import connect

    ws = await connect(url, compression=None, max_size=None, ping_interval=None, open_timeout=20)
    return WebsocketsConn(ws)


Connector = Callable[[str], Awaitable[Conn]]


def pick_client(name: str) -> tuple[str, Connector]:
    if name in ("auto", "picows"):
        try:
            import picows  # noqa: F401
        except ImportError:
            if name == "picows":
                raise
        else:
            return "picows", connect_picows
    return "websockets", connect_websockets


# ----- wire frames ------------------------------------------------------------------


def request(request_id: str, route: str, method: str, payload: str) -> bytes:
    body = {"request_id": request_id, "payload": payload, "header": {}, "route": route}
    body["method"] = method
    return json.dumps(body, separators=(",", ":")).encode()


def echo_frame(i: int) -> bytes:
    """A GET /echo request of about 100 bytes (the raw server echoes the same bytes)."""
    return request(f"e{i:06d}", "/echo", "GET", "p" * 24)


def rr_frame(wire: str, i: int) -> bytes:
    """One round trip's request: xraptor's GET /echo (raw echoes it), or a Socket.IO event
    ``fast`` with an ack id (one is outstanding per connection, so one id does)."""
    if wire == "sio":
        return b'421["fast","' + b"p" * 24 + b'"]'
    return echo_frame(i)


#: Engine.IO's ping (every 25 s by default) and the pong a Socket.IO client owes it
EIO_PING = b"2"
EIO_PONG = b"3"


def join_frames(wire: str, kind: str, i: int) -> list[bytes]:
    """What a connection sends after connecting; the server answers exactly one frame."""
    if wire == "sio":
        # Socket.IO CONNECT to the main namespace; Engine.IO's open packet comes first
        # (``0{...}``), but it is not the answer ``is_join_answer`` waits for. A fan-out
        # member then enters the room (the ack is not awaited: the warm-up probes are)
        return [b"40", b'421["join",""]'] if kind == "member" else [b"40"]
    if wire == "raw":
        return [echo_frame(i)] if kind == "plain" else [b"join"]
    if kind == "member":
        return [
            request(f"m{i:06d}", "/chat_messages", "SUB", json.dumps({"chat_id": ROOM})),
            echo_frame(i),
        ]
    if kind == "sub":
        return [request(f"s{i:06d}", "/stream", "SUB", ""), echo_frame(i)]
    return [echo_frame(i)]


def is_join_answer(wire: str, data: bytes) -> bool:
    """Socket.IO's CONNECT answer is ``40{"sid":...}``; other wires answer with one frame."""
    return data.startswith(b"40") if wire == "sio" else True


def path_for(wire: str, kind: str) -> str:
    if wire == "sio":
        # Engine.IO 4 straight over WebSocket, no long-polling first
        return "/socket.io/?EIO=4&transport=websocket"
    if wire != "raw":
        return "/"
    return {"member": "/member", "sub": "/sub", "pub": "/pub"}.get(kind, "/echo")


def publish_frame(wire: str, seq: int) -> bytes:
    text = fanout_text(seq, time.monotonic_ns())
    if wire == "raw":
        return text.encode()
    if wire == "sio":
        return b'42["pub","' + text.encode() + b'"]'
    payload = json.dumps({"chat_id": ROOM, "client_id": "pub", "message": text})
    return request(f"p{seq}", "/send_message_to_chat_room", "POST", payload)


def _pong(conn: Conn) -> Handler:
    """A handler that only answers Engine.IO pings."""

    def on_message(data: bytes) -> None:
        if data == EIO_PING:
            conn.send(EIO_PONG)

    return on_message


async def open_joined(
    connect: Connector, url: str, wire: str, kind: str, count: int, first: int, timeout: float
) -> tuple[list[Conn], int]:
    """Open ``count`` connections, each joined (one answer awaited); return them and failures."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(100)
    conns: list[Conn] = []
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with gate:
            try:
                conn = await asyncio.wait_for(connect(url), timeout)
                answered: asyncio.Future[None] = loop.create_future()

                def on_answer(data: bytes) -> None:
                    if not answered.done() and is_join_answer(wire, data):
                        answered.set_result(None)

                conn.handler = on_answer
                for frame in join_frames(wire, kind, i):
                    conn.send(frame)
                await asyncio.wait_for(answered, timeout)
                conn.handler = _ignore
                conns.append(conn)
            except Exception as error:
                failures += 1
                if failures <= 3:
                    print(f"connection {i} failed: {error!r}", file=sys.stderr)

    await asyncio.gather(*(one(first + i) for i in range(count)))
    return conns, failures


def percentile(sorted_values: list[int], q: float, unit: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / unit


class Control:
    """The stdin/stdout conversation with the orchestrator."""

    async def line(self, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        text = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), timeout)
        return str(text).strip()

    def say(self, word: str, data: dict[str, Any] | None = None) -> None:
        print(word if data is None else f"{word} {json.dumps(data)}", flush=True)


# ----- scenarios ----------------------------------------------------------------------


class RoundTrips:
    __slots__ = ("active", "deadline", "finished", "limit", "outstanding", "started")

    def __init__(self) -> None:
        self.active = False
        self.deadline = 0
        self.limit = 0
        self.started = 0
        self.outstanding = 0
        self.finished = asyncio.Event()


async def scenario_rr(args: argparse.Namespace, connect: Connector, control: Control) -> None:
    n = args.conns
    conns, failures = await open_joined(
        connect, args.url + path_for(args.wire, "plain"), args.wire, "plain", n, 0, 20
    )
    if failures:
        raise SystemExit(f"{failures} of {n} connections failed")
    frames = [rr_frame(args.wire, i) for i in range(n)]
    sio = args.wire == "sio"
    sent_at = [0] * n
    latencies: array[int] = array("q")
    st = RoundTrips()

    def make_handler(i: int) -> Handler:
        conn = conns[i]
        frame = frames[i]

        def on_message(data: bytes) -> None:
            if sio and data == EIO_PING:
                conn.send(EIO_PONG)
                return
            now = time.perf_counter_ns()
            latencies.append(now - sent_at[i])
            if st.started < st.limit and now < st.deadline:
                st.started += 1
                sent_at[i] = time.perf_counter_ns()
                conn.send(frame)
            else:
                st.outstanding -= 1
                if st.outstanding == 0:
                    st.finished.set()

        return on_message

    for i, conn in enumerate(conns):
        conn.handler = make_handler(i)

    async def phase(limit: int, seconds: float) -> tuple[int, float]:
        latencies[:] = array("q")
        st.finished.clear()
        st.limit = limit
        st.deadline = time.perf_counter_ns() + int(seconds * 1e9)
        st.started = min(n, limit)
        st.outstanding = st.started
        start = time.perf_counter()
        for i in range(st.started):
            sent_at[i] = time.perf_counter_ns()
            conns[i].send(frames[i])
        await asyncio.wait_for(st.finished.wait(), seconds + 20)
        return len(latencies), time.perf_counter() - start

    await phase(max(n * 5, args.round_trips // 20), min(0.5, args.seconds))
    control.say("READY")
    if await control.line(120) != "GO":
        return
    cpu0 = time.process_time()
    done, elapsed = await phase(args.round_trips, args.seconds)
    cpu = time.process_time() - cpu0
    values = sorted(latencies)
    control.say(
        "RESULT",
        {
            "round_trips": done,
            "elapsed_s": elapsed,
            "rate": done / elapsed,
            "p50_us": percentile(values, 0.50, 1e3),
            "p99_us": percentile(values, 0.99, 1e3),
            "client_cpu_s": cpu,
            "client_cpu_us_per_op": cpu / done * 1e6 if done else None,
            "ops": done,
        },
    )
    await control.line(60)
    for conn in conns:
        conn.close()


#: in a fan-out, one member in SAMPLE parses every frame it receives (its latency, and
#: a check that it is the message expected next); the others count frames (the load
#: generator must not be the bottleneck: parsing every frame cost it as much CPU per
#: delivery as the fastest server spends)
SAMPLE = 8
#: rooms smaller than this are sampled whole (one member in 8 would be too few)
SAMPLE_ALL = 64


class FanOut:
    __slots__ = (
        "deadline",
        "delivered",
        "extra",
        "fenced",
        "finished",
        "inflight",
        "last_ns",
        "limit",
        "misordered",
        "seen",
        "sent",
    )

    def __init__(self) -> None:
        self.deadline = 0
        self.limit = 0
        self.sent = 0
        self.inflight = 0
        self.delivered = 0
        self.seen = 0
        self.fenced = 0
        self.misordered = 0
        self.extra = 0
        self.last_ns = 0
        self.finished = asyncio.Event()


async def scenario_fanout(args: argparse.Namespace, connect: Connector, control: Control) -> None:
    m = args.members
    members, failures = await open_joined(
        connect, args.url + path_for(args.wire, "member"), args.wire, "member", m, 0, 30
    )
    if failures:
        raise SystemExit(f"{failures} of {m} members failed to join")
    if args.wire == "sio":  # a Socket.IO publisher connects to the namespace first
        joined, failures = await open_joined(
            connect, args.url + path_for(args.wire, "pub"), args.wire, "pub", 1, m, 30
        )
        if failures:
            raise SystemExit("the publisher failed to connect")
        publisher = joined[0]
        publisher.handler = _pong(publisher)
    else:
        publisher = await connect(args.url + path_for(args.wire, "pub"))
    sio = args.wire == "sio"
    st = FanOut()
    counts = [0] * args.messages
    seen = bytearray(m)
    latencies: array[int] = array("q")
    probes_done = asyncio.Event()
    fence_done = asyncio.Event()
    fenced = bytearray(m)
    fence = -1  # the last probe's number, once sent
    next_seq = [0] * m  # the next measured message each member should receive
    window = args.window

    def pump() -> None:
        while st.inflight < window and st.sent < st.limit and time.monotonic_ns() < st.deadline:
            publisher.send(publish_frame(args.wire, st.sent))
            st.sent += 1
            st.inflight += 1
        if st.inflight == 0:
            st.finished.set()

    def completed() -> None:
        st.last_ns = time.monotonic_ns()
        st.inflight -= 1
        pump()

    def make_handler(i: int) -> Handler:
        """Every frame parsed: the warm-up, and the Socket.IO wire (pings among the pushes)."""
        conn = members[i]

        def on_message(data: bytes) -> None:
            match = MARK.search(data)
            if match is None:
                if sio and data == EIO_PING:
                    conn.send(EIO_PONG)
                return
            seq = int(match.group(2))
            if seq >= PROBE_BASE:
                if not seen[i]:
                    seen[i] = 1
                    st.seen += 1
                    if st.seen == m:
                        probes_done.set()
                if seq == fence and not fenced[i]:
                    fenced[i] = 1
                    st.fenced += 1
                    if st.fenced == m:
                        fence_done.set()
                return
            now = time.monotonic_ns()
            latencies.append(now - int(match.group(1)))
            st.delivered += 1
            st.last_ns = now
            count = counts[seq] + 1
            counts[seq] = count
            if count == m:
                st.inflight -= 1
                pump()

        return on_message

    def sampled(i: int) -> bool:
        return m < SAMPLE_ALL or i % SAMPLE == SAMPLE // 2

    def make_counter(i: int) -> Handler:
        """The measured frames, counted: a member's n-th frame is message n (per member
        the server keeps the order, and nothing else arrives after the fence). Sampled
        members (every one in a room under ``SAMPLE_ALL``, else one in ``SAMPLE``) parse
        each frame: its latency, and a check of that order (``misordered``)."""
        limit = len(counts)
        if not sampled(i):

            def on_message(data: bytes) -> None:
                seq = next_seq[i]
                if seq >= limit:
                    st.extra += 1  # more frames than messages: not counted
                    return
                next_seq[i] = seq + 1
                st.delivered += 1
                count = counts[seq] + 1
                counts[seq] = count
                if count == m:
                    completed()

            return on_message

        def on_sampled(data: bytes) -> None:
            seq = next_seq[i]
            if seq >= limit:
                st.extra += 1
                return
            next_seq[i] = seq + 1
            match = MARK.search(data)
            if match is not None:
                latencies.append(time.monotonic_ns() - int(match.group(1)))
            if match is None or int(match.group(2)) != seq:
                st.misordered += 1
            st.delivered += 1
            count = counts[seq] + 1
            counts[seq] = count
            if count == m:
                completed()

        return on_sampled

    for i, conn in enumerate(members):
        conn.handler = make_handler(i)

    # warm-up: probes until every member has received one (rooms open asynchronously)
    probe_deadline = time.monotonic() + 20
    k = 0
    while not probes_done.is_set() and time.monotonic() < probe_deadline:
        publisher.send(publish_frame(args.wire, PROBE_BASE + k))
        k += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(probes_done.wait(), 0.05)
    if not probes_done.is_set():
        raise SystemExit(f"only {st.seen} of {m} members received a warm-up message")
    # then a last probe (the fence): once every member has it, no probe is on its way
    fence = PROBE_BASE + k
    publisher.send(publish_frame(args.wire, fence))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fence_done.wait(), 60)  # 0.4.1 over Redis is slow
    if not fence_done.is_set():
        raise SystemExit(f"only {st.fenced} of {m} members received the last warm-up message")
    if not sio:
        for i, conn in enumerate(members):
            conn.handler = make_counter(i)
            if not sampled(i) and hasattr(conn, "needs_data"):
                conn.needs_data = False  # a client that can count frames unread does
    await asyncio.sleep(0.3)
    control.say("READY")
    if await control.line(120) != "GO":
        return
    cpu0 = time.process_time()
    start = time.monotonic_ns()
    st.limit = args.messages
    st.deadline = start + int(args.seconds * 1e9)
    st.last_ns = start
    pump()
    # bounded: the publishing deadline, then a stall limit without a message completed
    stall_ns = int(args.stall * 1e9)
    hard_deadline = time.monotonic() + args.seconds + 30
    while not st.finished.is_set() and time.monotonic() < hard_deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(st.finished.wait(), 0.1)
        if time.monotonic_ns() - st.last_ns > stall_ns:
            break
    cpu = time.process_time() - cpu0
    elapsed = max(st.last_ns - start, 1_000_000) / 1e9
    values = sorted(latencies)
    expected = st.sent * m
    control.say(
        "RESULT",
        {
            "messages": st.sent,
            "members": m,
            "delivered": st.delivered,
            "expected": expected,
            "delivered_ratio": st.delivered / expected if expected else 0.0,
            "elapsed_s": elapsed,
            "rate": st.delivered / elapsed,
            "p50_ms": percentile(values, 0.50, 1e6),
            "p99_ms": percentile(values, 0.99, 1e6),
            "client_cpu_s": cpu,
            "client_cpu_us_per_op": cpu / st.delivered * 1e6 if st.delivered else None,
            "ops": st.delivered,
            # sampled frames that were not the message expected next, frames beyond the
            # messages sent (both 0 for a server that keeps the order and adds nothing)
            "misordered": st.misordered,
            "extra": st.extra,
        },
    )
    await control.line(60)
    publisher.close()
    for conn in members:
        conn.close()


async def scenario_idle(args: argparse.Namespace, connect: Connector, control: Control) -> None:
    kind = "sub" if args.subscribe else "plain"
    url = args.url + path_for(args.wire, kind)
    warm, failures = await open_joined(connect, url, args.wire, kind, args.warm, 0, 30)
    if failures:
        raise SystemExit(f"{failures} of {args.warm} warm-up connections failed")
    await asyncio.sleep(args.settle)
    control.say("READY")
    if await control.line(120) != "GO":
        return
    start = time.monotonic()
    conns, failures = await open_joined(connect, url, args.wire, kind, args.conns, args.warm, 60)
    elapsed = time.monotonic() - start
    await asyncio.sleep(args.settle)
    control.say(
        "RESULT",
        {"connected": len(conns), "failed": failures, "elapsed_s": elapsed, "ops": len(conns)},
    )
    await control.line(120)
    for conn in (*warm, *conns):
        conn.close()
    await asyncio.sleep(0.2)


# ----- mixed: pipelined requests, half of them to a handler that awaits 5 ms ----------------

FAST_DATA = "f" * 24
SLOW_DATA = "s" * 24
_ID_KEY = b'"request_id":"'


class MixedWire:
    """One wire's request encoding and answer decoding for the ``mixed`` scenario.

    ``request(ident, slow)`` is the frame of request ``ident``; ``answer(data)`` is that
    answer's ident, or ``None`` for a frame that is no answer; ``check(data, slow)`` says
    whether the answer carries what the request sent. Both sides cost about the same
    (a prefix + number + constant tail; a find and an int()), so the client's cost does
    not differ between systems beyond the frames' sizes.
    """

    def __init__(self, wire: str) -> None:
        self.sio = wire == "sio"
        if self.sio:
            # Socket.IO EVENT with an ack id: 42<id>["slow","sss..."]; the ack: 43<id>["sss..."]
            self.head = b"42"
            self.tails = (
                json.dumps(["fast", FAST_DATA], separators=(",", ":")).encode(),
                json.dumps(["slow", SLOW_DATA], separators=(",", ":")).encode(),
            )
        else:
            # an xraptor GET; the answer echoes request_id and payload
            self.head = b"{" + _ID_KEY
            tail = '","payload":"{}","header":{{}},"route":"{}","method":"GET"}}'
            self.tails = (
                tail.format(FAST_DATA, "/echo").encode(),
                tail.format(SLOW_DATA, "/slow").encode(),
            )
        self.marks = (FAST_DATA.encode(), SLOW_DATA.encode())

    def request(self, ident: int, slow: bool) -> bytes:
        return self.head + str(ident).encode() + self.tails[slow]

    def answer(self, data: bytes) -> int | None:
        if self.sio:
            if not data.startswith(b"43"):
                return None
            end = data.find(b"[", 2)
            return int(data[2:end]) if end > 2 else None
        start = data.find(_ID_KEY)
        if start < 0:
            return None
        start += len(_ID_KEY)
        end = data.find(b'"', start)
        digits = data[start:end]
        return int(digits) if digits.isdigit() else None

    def check(self, data: bytes, slow: bool) -> bool:
        return self.marks[slow] in data


class Mixed:
    __slots__ = ("answers", "bad", "deadline", "finished", "inflight", "limit", "next_id", "sent")

    def __init__(self) -> None:
        self.deadline = 0
        self.limit = 0
        self.sent = 0
        self.answers = 0
        self.inflight = 0
        self.bad = 0
        self.next_id = 0
        self.finished = asyncio.Event()


async def scenario_mixed(args: argparse.Namespace, connect: Connector, control: Control) -> None:
    """Each connection keeps ``--inflight`` requests outstanding, alternately fast and slow.

    Answers may come back in any order; each is matched to its request by id (xraptor's
    ``request_id``, Socket.IO's ack id). An answer sends the connection's next request
    until the phase's deadline or request limit; the phase ends when every request is
    answered. Throughput counts every answer; latency is kept apart for fast and slow.
    """
    n = args.conns
    window = args.inflight
    conns, failures = await open_joined(
        connect, args.url + path_for(args.wire, "plain"), args.wire, "plain", n, 0, 20
    )
    if failures:
        raise SystemExit(f"{failures} of {n} connections failed")
    codec = MixedWire(args.wire)
    st = Mixed()
    #: per connection: request id -> (sent at ns, slow)
    pending: list[dict[int, tuple[int, bool]]] = [{} for _ in range(n)]
    turns = [0] * n
    fast_ns: array[int] = array("q")
    slow_ns: array[int] = array("q")

    def send_next(i: int) -> None:
        slow = bool(turns[i] & 1)
        turns[i] += 1
        st.next_id += 1
        ident = st.next_id
        st.sent += 1
        st.inflight += 1
        pending[i][ident] = (time.perf_counter_ns(), slow)
        conns[i].send(codec.request(ident, slow))

    def make_handler(i: int) -> Handler:
        mine = pending[i]
        conn = conns[i]

        def on_message(data: bytes) -> None:
            ident = codec.answer(data)
            if ident is None:
                if data == b"2":  # Engine.IO ping (every 25 s by default): pong
                    conn.send(b"3")
                return
            entry = mine.pop(ident, None)
            if entry is None:
                st.bad += 1
                return
            now = time.perf_counter_ns()
            sent_ns, slow = entry
            (slow_ns if slow else fast_ns).append(now - sent_ns)
            st.answers += 1
            st.inflight -= 1
            if not codec.check(data, slow):
                st.bad += 1
            if st.sent < st.limit and now < st.deadline:
                send_next(i)
            elif st.inflight == 0:
                st.finished.set()

        return on_message

    for i, conn in enumerate(conns):
        conn.handler = make_handler(i)

    async def phase(limit: int, seconds: float) -> float:
        fast_ns[:] = array("q")
        slow_ns[:] = array("q")
        st.finished.clear()
        st.answers = st.sent = 0
        st.limit = limit
        st.deadline = time.perf_counter_ns() + int(seconds * 1e9)
        start = time.perf_counter()
        for _ in range(window):
            for i in range(n):
                if st.sent < limit:
                    send_next(i)
        if st.inflight:
            await asyncio.wait_for(st.finished.wait(), seconds + 20)
        return time.perf_counter() - start

    await phase(max(n * window * 4, args.round_trips // 20), min(0.5, args.seconds))
    control.say("READY")
    if await control.line(120) != "GO":
        return
    cpu0 = time.process_time()
    elapsed = await phase(args.round_trips, args.seconds)
    cpu = time.process_time() - cpu0
    if st.bad:
        raise SystemExit(f"{st.bad} answers were unexpected or did not echo their request")
    fast = sorted(fast_ns)
    slow = sorted(slow_ns)
    done = st.answers
    control.say(
        "RESULT",
        {
            "answers": done,
            "fast": len(fast),
            "slow": len(slow),
            "elapsed_s": elapsed,
            "rate": done / elapsed,
            "fast_p50_us": percentile(fast, 0.50, 1e3),
            "fast_p99_us": percentile(fast, 0.99, 1e3),
            "slow_p50_us": percentile(slow, 0.50, 1e3),
            "client_cpu_s": cpu,
            "client_cpu_us_per_op": cpu / done * 1e6 if done else None,
            "ops": done,
        },
    )
    await control.line(60)
    for conn in conns:
        conn.close()


SCENARIOS = {
    "rr": scenario_rr,
    "fanout": scenario_fanout,
    "idle": scenario_idle,
    "mixed": scenario_mixed,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--url", required=True, help="ws://host:port (no path)")
    parser.add_argument("--wire", choices=["framework", "raw", "sio"], default="framework")
    parser.add_argument("--client", choices=["auto", "picows", "websockets"], default="auto")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--round-trips", type=int, default=200_000)
    parser.add_argument(
        "--inflight", type=int, default=16, help="mixed: requests outstanding per connection"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument(
        "--stall",
        type=float,
        default=6.0,
        help="give up after this long without a message delivered to every member",
    )
    parser.add_argument("--subscribe", action="store_true")
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--settle", type=float, default=1.0)
    args = parser.parse_args(argv)
    raise_nofile()
    client, connect = pick_client(args.client)
    print(f"client {client}", file=sys.stderr, flush=True)

    async def runner() -> None:
        await SCENARIOS[args.scenario](args, connect, Control())

    run_loop(runner(), "uvloop")


if __name__ == "__main__":
    main()
