"""Redis Cluster benchmarks: fan-out over a local cluster against fan-out over one Redis,
and publish throughput of one room against many rooms spread over the shards.

    python bench/cluster.py                         # 3 pairs, 1,000 members
    python bench/cluster.py --pairs 1 --members 100 --seconds 1 --messages 5000   # small

Starts a private ``redis-server`` and a private local cluster (3 masters, 3 replicas,
the tests' ``cluster_support``), both on loopback.

* ``fanout``: the ``fanout`` case of ``run.py`` (``loadgen.py``, one xraptor server
  process, ``--members`` websockets in one room) with the server's antenna on the
  single server, then on the cluster, alternating from pair to pair; the figures are
  medians over pairs and the ratio is cluster / single.
* ``publish``: in this process, one antenna posts ``--messages`` messages (``--window``
  in flight) and a second antenna receives them, all to one room, then spread over
  ``--rooms`` rooms; on the single server and on the cluster. The figure is messages
  per second from the first post to the last delivery.

Results go to ``bench/results/<time>-cluster.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "plugins" / "xraptor-redis" / "tests"))

import run  # noqa: E402
from cluster_support import LocalCluster  # noqa: E402

from xraptor import Antenna  # noqa: E402
from xraptor_redis.antenna import RedisAntenna  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--members", type=int, default=1000, help="fanout: room members")
    parser.add_argument("--seconds", type=float, default=2.0, help="fanout: measured seconds")
    parser.add_argument("--fanout-messages", type=int, default=300)
    parser.add_argument("--messages", type=int, default=20000, help="publish: messages")
    parser.add_argument("--rooms", type=int, default=300, help="publish: rooms of the spread case")
    parser.add_argument("--window", type=int, default=256, help="publish: posts in flight")
    parser.add_argument("--only", choices=["fanout", "publish"], default=None)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def fanout(args: argparse.Namespace, urls: dict[str, str], logs: Path) -> dict[str, Any]:
    run_args = run.parse_args(["--no-pin", "--seconds", str(args.seconds)])
    backends = run.Backends(logs)
    runner = run.Runner(run_args, backends, logs, {}, pin=False)
    members = args.members
    case = run.Case(
        f"fanout-cluster-{members}",
        "fanout",
        "redis",
        ["--members", str(members), "--messages", str(args.fanout_messages),
         "--seconds", str(args.seconds), "--window", str(max(2, 8000 // members))],
        run.fanout_metrics("redis", members),
        systems=("xraptor",),
    )  # fmt: skip
    samples: dict[str, list[dict[str, Any]]] = {"single": [], "cluster": []}
    for pair in range(args.pairs):
        order = ["single", "cluster"] if pair % 2 == 0 else ["cluster", "single"]
        for label in order:
            # the server is xraptor on the Redis antenna; a cluster URL selects cluster mode
            backends.urls["redis"] = urls[label]
            sample = runner.measure(case, "xraptor", pair)
            samples[label].append(sample)
            print(
                f"fanout {members} pair {pair + 1} [{label}] "
                f"rate={run.fmt(sample.get('rate'))} p99_ms={run.fmt(sample.get('p99_ms'))} "
                f"server_cpu_us={run.fmt(sample.get('server_cpu_us_per_op'))} "
                f"delivered={run.fmt(sample.get('delivered_ratio'))}",
                flush=True,
            )
    return _medians(samples, ("rate", "p99_ms", "server_cpu_us_per_op", "delivered_ratio"))


async def publish_rate(url: str, rooms: list[str], messages: int, window: int) -> float:
    """Messages/s from the first post to the last delivery, ``rooms`` in turn."""
    async with RedisAntenna(url=url) as sender, RedisAntenna(url=url) as receiver:
        received = 0
        done = asyncio.Event()

        class Count:
            def on_message(self, channel: str, message: str) -> None:
                nonlocal received
                received += 1
                if received == messages:
                    done.set()

            def on_gap(self, channel: str) -> None:
                pass

        counter = Count()
        for room in rooms:
            await receiver.listen(room, counter)
        limit = asyncio.Semaphore(window)

        async def post(antenna: Antenna, room: str, text: str) -> None:
            try:
                await antenna.post(room, text)
            finally:
                limit.release()

        started = time.perf_counter()
        tasks = []
        for n in range(messages):
            await limit.acquire()
            tasks.append(asyncio.ensure_future(post(sender, rooms[n % len(rooms)], f"m{n}")))
        await asyncio.gather(*tasks)
        await asyncio.wait_for(done.wait(), 60)
        elapsed = time.perf_counter() - started
        for room in rooms:
            await receiver.unlisten(room, counter)
        return messages / elapsed


def publish(args: argparse.Namespace, urls: dict[str, str]) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {}
    many = [f"bench-room-{i}" for i in range(args.rooms)]
    for pair in range(args.pairs):
        for label in ("single", "cluster") if pair % 2 == 0 else ("cluster", "single"):
            for shape, rooms in (("1 room", ["bench-room"]), (f"{args.rooms} rooms", many)):
                rate = asyncio.run(publish_rate(urls[label], rooms, args.messages, args.window))
                samples.setdefault(f"{label}, {shape}", []).append({"rate": rate})
                print(f"publish pair {pair + 1} [{label}, {shape}] {rate:,.0f} msg/s", flush=True)
    return _medians(samples, ("rate",))


def _medians(
    samples: dict[str, list[dict[str, Any]]], keys: tuple[str, ...]
) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for label, runs in samples.items():
        out[label] = {}
        for key in keys:
            values = [r[key] for r in runs if r.get(key) is not None]
            out[label][key] = statistics.median(values) if values else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = run.RESULTS / "logs" / f"{stamp}-cluster"
    logs.mkdir(parents=True, exist_ok=True)
    single = run.Backends(logs)
    single.start({"redis"})
    results: dict[str, Any] = {"when": stamp, "args": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="xraptor-bench-cluster-") as folder:
        cluster = LocalCluster(Path(folder))
        try:
            cluster.start()
            urls = {"single": single.urls["redis"], "cluster": cluster.url}
            print(f"single: {urls['single']}, cluster: {urls['cluster']}", flush=True)
            if args.only in (None, "fanout"):
                results["fanout"] = fanout(args, urls, logs)
            if args.only in (None, "publish"):
                results["publish"] = publish(args, urls)
        finally:
            cluster.stop()
            single.stop()
    print()
    if "fanout" in results:
        got = results["fanout"]
        print(f"fan-out to {args.members} members, deliveries/s (median of {args.pairs}):")
        for label in ("single", "cluster"):
            row = got[label]
            print(
                f"  {label:8} {run.fmt(row['rate'])}  p99 {run.fmt(row['p99_ms'])} ms  "
                f"server CPU {run.fmt(row['server_cpu_us_per_op'])} µs/delivery"
            )
        if got["single"]["rate"] and got["cluster"]["rate"]:
            print(f"  cluster / single: {got['cluster']['rate'] / got['single']['rate']:.2f}x")
    if "publish" in results:
        print(f"publish throughput, {args.messages} messages, post to delivery, msg/s:")
        for label, row in results["publish"].items():
            print(f"  {label:20} {run.fmt(row['rate'])}")
    out = args.out or run.RESULTS / f"{stamp}-cluster.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
