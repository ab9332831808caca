"""What room history costs on NATS (JetStream): fan-out with history against the same
fan-out without, and recovery throughput.

    python bench/history_nats.py                 # 100 members, 1,000 messages, 3 pairs
    python bench/history_nats.py --quick         # a smoke run
    python bench/history_nats.py --nats nats://127.0.0.1:4222 --members 1000 --messages 300

A private ``nats-server -js`` (store in a temporary directory) is started unless
``--nats`` names a server. Each pair runs the ``fanout`` scenario of ``loadgen.py``
against ``servers.py``'s xraptor app on the NATS antenna twice, the room without and
with history (``_history_server.py``), in alternating order; the table shows the
medians and the median of the per-pair ratios. Recovery: a room's history of
``--replay`` messages is read with ``read_history`` (the antenna alone) and replayed
to a client by a SUB with ``since`` (through a server process); both as messages per
second, beside the same replay on the memory antenna. Self-contained on purpose:
``run.py``'s cases are not touched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import ROOM, free_port

BENCH = Path(__file__).resolve().parent
#: the run's own subject prefix (so its own history streams), for every process
PREFIX = f"xrbench.{uuid.uuid4().hex[:12]}"


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    env = {**os.environ, "XRAPTOR_BENCH_NATS_PREFIX": PREFIX}
    return subprocess.Popen(cmd, cwd=BENCH, env=env, **kwargs)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_port(port: int, proc: subprocess.Popen[Any], seconds: float = 30) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {seconds} s")


def read_line(proc: subprocess.Popen[str], word: str, seconds: float = 180) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"loadgen ended before {word}")
        if line.startswith(word):
            return line.strip()
    raise SystemExit(f"no {word} from loadgen in {seconds} s")


def server(nats_url: str, history: int, port: int, log: Any) -> subprocess.Popen[Any]:
    """The bench app on NATS (on the memory antenna when ``nats_url`` is empty)."""
    cmd = [sys.executable, "_history_server.py", str(history), "xraptor", "--port", str(port)]
    cmd += ["--antenna", "nats", "--url", nats_url] if nats_url else ["--antenna", "memory"]
    proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc)
    return proc


def fanout(nats_url: str, history: int, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """One fan-out measurement (loadgen's RESULT) against a fresh server process."""
    port = free_port()
    proc = server(nats_url, history, port, log)
    try:
        cmd = [sys.executable, "loadgen.py", "fanout", "--url", f"ws://127.0.0.1:{port}"]
        cmd += ["--members", str(args.members), "--messages", str(args.messages)]
        cmd += ["--seconds", str(args.seconds), "--window", str(args.window)]
        client = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        assert client.stdin is not None
        try:
            read_line(client, "READY")
            client.stdin.write("GO\n")
            client.stdin.flush()
            result: dict[str, Any] = json.loads(read_line(client, "RESULT").split(" ", 1)[1])
            with contextlib.suppress(OSError):
                client.stdin.write("STOP\n")
                client.stdin.flush()
            return result
        finally:
            stop(client)
    finally:
        stop(proc)


async def recovery(nats_url: str, count: int, log: Any) -> dict[str, float]:
    """Messages per second: ``read_history`` of ``count`` messages, and their replay to
    a client by a SUB with ``since`` through a server process."""
    from xraptor.history import HistoryPolicy
    from xraptor_nats.antenna import NatsAntenna

    policy = HistoryPolicy(count + 10)
    async with NatsAntenna(servers=nats_url, subject_prefix=PREFIX) as antenna:
        antenna.set_history(lambda channel: policy if channel == ROOM else None)
        first = await antenna.publish_with_history(ROOM, "first", policy)
        text = json.dumps({"origin": "bench", "message": "x" * 80})
        for done in range(0, count, 200):  # 200 in flight at most
            batch = min(200, count - done)
            await asyncio.gather(
                *(antenna.publish_with_history(ROOM, text, policy) for _ in range(batch))
            )
        start = time.perf_counter()
        entries = await antenna.read_history(ROOM, first)
        read = time.perf_counter() - start
        assert entries is not None and len(entries) == count, "the history is not all there"
    nats_replay = await replay(nats_url, count, str(first), log)
    memory_replay = await replay("", count, None, log)
    return {
        "read_history_msgs_s": count / read,
        "sub_since_msgs_s": count / nats_replay,
        "memory_sub_since_msgs_s": count / memory_replay,
    }


async def replay(nats_url: str, count: int, since: str | None, log: Any) -> float:
    """Seconds a SUB with ``since`` takes to receive ``count`` messages through a server
    process; on the memory antenna (``nats_url`` empty) the messages are posted first."""
    from xraptor import Client

    port = free_port()
    proc = server(nats_url, count + 10, port, log)
    try:
        async with Client(f"ws://127.0.0.1:{port}", timeout=60, max_queue=count + 10) as client:
            if since is None:  # the memory antenna's history lives in the server process
                since = await fill_over_websocket(client, count)
            start = time.perf_counter()
            async with client.subscribe(
                "/chat_messages", {"chat_id": ROOM}, since={ROOM: since}
            ) as stream:
                for _ in range(count):
                    await anext(stream)
            return time.perf_counter() - start
    finally:
        stop(proc)


async def fill_over_websocket(client: Any, count: int) -> str:
    """Post a first message and ``count`` more to the room; the first one's position."""
    post = {"chat_id": ROOM, "client_id": "bench", "message": "x" * 80}
    async with client.subscribe("/chat_messages", {"chat_id": ROOM}) as stream:
        await client.post("/send_message_to_chat_room", post)
        first: str = (await anext(stream)).header["position"]
    for done in range(0, count, 200):
        batch = min(200, count - done)
        await asyncio.gather(
            *(client.post("/send_message_to_chat_room", post) for _ in range(batch))
        )
    return first


async def delete_streams(nats_url: str) -> None:
    """Delete the history streams of this run (``PREFIX``'s)."""
    import nats

    from xraptor_nats.history import default_stream_prefix

    base = default_stream_prefix(PREFIX) + "_"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith(base):
                await js.delete_stream(name)
    finally:
        await nc.close()


def private_nats(store: Path) -> tuple[str, subprocess.Popen[Any] | None]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        raise SystemExit("no nats-server binary: pass --nats URL of a server with JetStream")
    port = free_port()
    proc = spawn(
        [binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return f"nats://127.0.0.1:{port}", proc


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nats", default="", help="a NATS server with JetStream (default: private)"
    )
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=20, help="messages in flight")
    parser.add_argument("--history", type=int, default=1000, help="the room's history_size")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--replay", type=int, default=10_000, help="messages recovered")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.messages, args.pairs, args.replay, args.seconds = 10, 50, 1, 500, 2
    with tempfile.TemporaryDirectory(prefix="xraptor-bench-js-") as tmp:
        nats_proc = None
        url = args.nats
        if not url:
            url, nats_proc = private_nats(Path(tmp) / "store")
        log_path = Path(tmp) / "bench.log"
        try:
            with log_path.open("w") as log:
                rows: dict[str, list[dict[str, Any]]] = {"plain": [], "history": []}
                for pair in range(args.pairs):
                    order = ("plain", "history") if pair % 2 == 0 else ("history", "plain")
                    for kind in order:
                        size = args.history if kind == "history" else 0
                        rows[kind].append(fanout(url, size, args, log))
                replay = asyncio.run(recovery(url, args.replay, log))
        except BaseException:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            if nats_proc is not None:
                stop(nats_proc)
            else:  # a server of someone else's: leave nothing behind
                asyncio.run(delete_streams(url))
    ratios = [h["rate"] / p["rate"] for p, h in zip(rows["plain"], rows["history"], strict=True)]
    print(f"fan-out on NATS, {args.members} members, {args.messages} messages, {args.pairs} pairs")
    print(f"{'':28}{'no history':>14}{'history':>14}")
    for key, label in (
        ("rate", "deliveries/s"),
        ("p50_ms", "p50 latency ms"),
        ("p99_ms", "p99 latency ms"),
        ("delivered_ratio", "delivered/expected"),
    ):
        plain = median([r[key] for r in rows["plain"]])
        kept = median([r[key] for r in rows["history"]])
        print(f"{label:28}{plain:>14.2f}{kept:>14.2f}")
    print(
        f"{'ratio history/no history':28}{median(ratios):>14.2f}  (per pair: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + ")"
    )
    print(
        f"recovery of {args.replay} messages: read_history {replay['read_history_msgs_s']:,.0f}"
        f" msgs/s; SUB with since, to a client {replay['sub_since_msgs_s']:,.0f} msgs/s"
        f" (the same on the memory antenna: {replay['memory_sub_since_msgs_s']:,.0f} msgs/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
