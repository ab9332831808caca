"""Room history on Redis: what it costs and how fast recovery goes (issue 12).

    python bench/history.py                      # 3 pairs, 100 and 1,000 members
    python bench/history.py --quick              # one pair, small sizes (a smoke run)
    python bench/history.py --members 1000 --pairs 5 --replay 20000

* **fan-out with history**: the ``fanout-redis-<members>`` case of ``run.py`` (the same
  load generator, server and private redis-server), served by xraptor with and without
  history on the bench room (``XRAPTOR_BENCH_HISTORY``: 10,000 messages), back to back in
  an order that alternates from pair to pair. The table gives the median of each figure
  and of the per-pair ratio *with history / without*.
* **recovery throughput**: ``--replay`` messages are appended to the room's history
  (through a Redis antenna in this process), then a client SUBs with ``since`` the first
  of them; messages replayed per second, from the SUB sent to the last push received,
  with the ``xraptor.Client`` reading them (its parsing is part of the figure).

Results go to ``bench/results/history-<time>.json`` beside run.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
from common import ROOM, free_port  # noqa: E402
from servers import HISTORY_ENV  # noqa: E402

#: messages of history the bench room keeps in the "with history" runs
HISTORY_SIZE = 10_000


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """This script's options, and run.py's (defaults, for its Runner)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one pair, small sizes")
    parser.add_argument("--pairs", type=int, default=None, help="pairs (default 3)")
    parser.add_argument(
        "--members", default=None, help="comma-separated fan-out sizes (default 100,1000)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument(
        "--replay", type=int, default=None, help="messages replayed per recovery (10000)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = parser.parse_args(argv)
    quick = args.quick
    args.pairs = args.pairs or (1 if quick else 3)
    args.members = [int(m) for m in (args.members or ("10" if quick else "100,1000")).split(",")]
    args.replay = args.replay or (500 if quick else HISTORY_SIZE)
    if quick:
        args.seconds = min(args.seconds, 1.0)
    return args, run.parse_args(["--seconds", str(args.seconds), "--no-041"])


def fanout_case(members: int, seconds: float, window_deliveries: int = 8000) -> run.Case:
    messages = min(3000, max(100, 300_000 // members))
    return run.Case(
        f"fanout-redis-{members}",
        "fanout",
        "redis",
        [
            "--members",
            str(members),
            "--messages",
            str(messages),
            "--seconds",
            str(seconds),
            "--window",
            str(max(2, window_deliveries // members)),
        ],
        run.fanout_metrics("redis", members),
    )


def measure_fanout(runner: run.Runner, case: run.Case, history: bool, pair: int) -> dict[str, Any]:
    os.environ[HISTORY_ENV] = str(HISTORY_SIZE) if history else ""
    try:
        return runner.measure(case, "xraptor", pair * 2 + history)
    finally:
        os.environ.pop(HISTORY_ENV, None)


async def replay_rate(url: str, port: int, count: int) -> dict[str, Any]:
    """Append ``count`` messages to the bench room's history, then time a SUB that
    recovers them all (the server at ``port`` serves the room with history)."""
    from xraptor import Client
    from xraptor.history import HistoryPolicy
    from xraptor_redis.antenna import RedisAntenna

    policy = HistoryPolicy(replay_history(count))
    text = "x" * 100
    async with RedisAntenna(url=url) as antenna:
        first = await antenna.publish_with_history(ROOM, "first", policy)
        for start in range(0, count, 1000):
            batch = range(start, min(count, start + 1000))
            await asyncio.gather(*(antenna.publish_with_history(ROOM, text, policy) for _ in batch))
    # the recovered messages arrive before the SUB's acknowledgment: room for them all
    async with Client(f"ws://127.0.0.1:{port}", max_queue=count + 16) as client:
        sent = time.perf_counter()
        stream = client.subscribe("/chat_messages", {"chat_id": ROOM}, since={ROOM: str(first)})
        async with stream:
            received = 0
            async for push in stream:
                if "notice" in push.header:
                    raise RuntimeError(f"recovery failed: {push.header}")
                received += 1
                if received == count:
                    break
        elapsed = time.perf_counter() - sent
    return {"messages": count, "elapsed_s": elapsed, "rate": count / elapsed}


def replay_history(count: int) -> int:
    """The history a replay of ``count`` messages needs: them, and the one before."""
    return max(HISTORY_SIZE, count + 1)


def measure_replay(runner: run.Runner, url: str, count: int, pair: int) -> dict[str, Any]:
    port = free_port()
    os.environ[HISTORY_ENV] = str(replay_history(count))
    log = runner.logs / f"replay-{pair}-server.log"
    try:
        with log.open("wb") as out:
            server = run.spawn(
                runner.server_cmd("xraptor", port, "redis"),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=BENCH,
            )
    finally:
        os.environ.pop(HISTORY_ENV, None)
    try:
        run.wait_port(port, 30, server)
        return asyncio.run(replay_rate(url, port, count))
    finally:
        run.stop_process(server)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    args, run_args = parse_args(argv)
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = run.RESULTS / "logs" / f"history-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    backends = run.Backends(logs)
    backends.start({"redis"})
    if "redis" not in backends.urls:
        print(f"no Redis: {backends.reasons.get('redis')}", file=sys.stderr)
        return 2
    runner = run.Runner(run_args, backends, logs, {}, pin=(os.cpu_count() or 1) >= 2)
    results: dict[str, Any] = {"fanout": {}, "replay": []}
    lines = []
    try:
        for members in args.members:
            case = fanout_case(members, args.seconds)
            samples: dict[str, list[dict[str, Any]]] = {"plain": [], "history": []}
            for pair in range(args.pairs):
                order = (False, True) if pair % 2 == 0 else (True, False)
                for history in order:
                    sample = measure_fanout(runner, case, history, pair)
                    samples["history" if history else "plain"].append(sample)
                    print(
                        f"{case.name} pair {pair + 1} [{'history' if history else 'plain'}] "
                        f"rate={run.fmt(sample.get('rate'))} "
                        f"p99_ms={run.fmt(sample.get('p99_ms'))} "
                        f"cpu_us={run.fmt(sample.get('server_cpu_us_per_op'))} "
                        f"delivered={run.fmt(sample.get('delivered_ratio'))}",
                        flush=True,
                    )
            results["fanout"][case.name] = samples
            for key, label in (
                ("rate", "deliveries/s"),
                ("p99_ms", "p99 latency ms"),
                ("server_cpu_us_per_op", "server CPU µs/delivery"),
            ):
                plain = [s[key] for s in samples["plain"] if s.get(key) is not None]
                kept = [s[key] for s in samples["history"] if s.get(key) is not None]
                ratio = [k / p for k, p in zip(kept, plain, strict=False) if p]
                lines.append(
                    f"| {case.name}: {label} | {run.fmt(median(plain))} | "
                    f"{run.fmt(median(kept))} | {run.fmt(median(ratio))} |"
                )
        for pair in range(args.pairs):
            sample = measure_replay(runner, backends.urls["redis"], args.replay, pair)
            results["replay"].append(sample)
            print(
                f"replay pair {pair + 1}: {sample['messages']} messages in "
                f"{sample['elapsed_s']:.3f} s = {run.fmt(sample['rate'])} messages/s",
                flush=True,
            )
    finally:
        backends.stop()
    rate = median([s["rate"] for s in results["replay"]])
    text = "\n".join(
        [
            "| figure | without history | with history | ratio (median per pair) |",
            "|---|---:|---:|---:|",
            *lines,
            "",
            f"recovery (SUB with since, {args.replay} messages): {run.fmt(rate)} messages/s "
            "replayed (median)",
        ]
    )
    print()
    print(text)
    out = args.out or run.RESULTS / f"history-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results.update(
        when=stamp,
        argv=sys.argv[1:] if argv is None else argv,
        pairs=args.pairs,
        history_size=HISTORY_SIZE,
        table=text,
        seconds=time.monotonic() - started,
    )
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
