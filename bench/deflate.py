"""The compression cases: xraptor's ``compression="shared" | "deflate" | None`` with
clients that negotiate permessage-deflate as browsers do.

    python bench/deflate.py                     # every case, 3 pairs (about 8 minutes)
    python bench/deflate.py --quick             # tiny sizes (a smoke run)
    python bench/deflate.py --only fanout --pairs 5

The systems are one server policy each, driven by ``deflate_loadgen.py`` (picows
doing permessage-deflate with zlib, offering what Chromium offers):

* ``shared``: ``compression="shared"`` (each room message's tail compressed once);
* ``deflate``: ``compression="deflate"``, websockets' own per-connection compression
  with context takeover (what xraptor did before ``shared``);
* ``none``: ``compression=None``: the same clients offer, nothing is negotiated;
* ``plain``: the default server, clients that offer nothing (the idle baseline);
* ``shared-ctx``: ``shared`` without asking ``client_no_context_takeover`` (the
  server then keeps a decoder per connection): what that request saves.

Cases: ``fanout-1000`` (server CPU per delivery, target shared/none <= 1.15),
``rr`` (answers), ``idle`` (memory per connection, target shared/plain <= 1.3), and
``ratio``: the bytes per message of the three policies for a few kinds of message,
computed in this process (what dropping context takeover gives up). Every server
runs in its own process pinned to CPU 0 and the load generator on CPU 1, with the
orchestration of ``run.py`` (``Runner``); figures are medians over pairs and ratios
medians of per-pair ratios. Results go to ``bench/results/<time>-deflate.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
from common import fanout_text, raise_nofile, run_loop  # noqa: E402

SYSTEMS = ("shared", "deflate", "none", "plain", "shared-ctx")
#: the server's ``compression`` per system
POLICY: dict[str, str | None] = {
    "shared": "shared",
    "deflate": "deflate",
    "none": None,
    "plain": "shared",
    "shared-ctx": "shared",
}
#: (numerator, denominator) of the ratio columns, when both ran in a case
RATIOS = (
    ("shared", "none"),
    ("deflate", "none"),
    ("shared", "plain"),
    ("deflate", "plain"),
    ("shared-ctx", "plain"),
    ("shared", "deflate"),
)


# ----- the server ------------------------------------------------------------------------


async def serve(system: str, port: int, stop: asyncio.Event) -> None:
    import servers

    import xraptor.deflate

    if system == "shared-ctx":
        xraptor.deflate.CLIENT_NO_CONTEXT_TAKEOVER = False
    app = servers.xraptor_app(port, "memory", "")
    app.compression = POLICY[system]
    await app.start()
    try:
        await stop.wait()
    finally:
        await app.close()


def serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="one server of the compression cases")
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    raise_nofile()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.system, args.port, stop)

    run_loop(runner(), args.loop)


# ----- measuring ---------------------------------------------------------------------------


@dataclass
class DeflateRunner(run.Runner):
    """``run.Runner`` with this module's servers and the deflate load generator."""

    loadgen: Path = BENCH / "deflate_loadgen.py"

    def server_cmd(self, system: str, port: int, antenna: str) -> list[str]:
        script = str(BENCH / "deflate.py")
        return [sys.executable, script, "serve", system, "--port", str(port), "--loop", "uvloop"]

    def _drive(self, case: run.Case, system: str, *rest: Any) -> dict[str, Any]:
        self.args.client = "plain" if system == "plain" else "offer"
        return super()._drive(case, system, *rest)


def fanout_case(name: str, members: int, messages: int, seconds: str, extra: list[str]) -> run.Case:
    return run.Case(
        name,
        "fanout",
        "memory",
        [
            *("--members", str(members), "--messages", str(messages), "--seconds", seconds),
            *("--window", str(max(2, 8000 // members)), *extra),
        ],
        [
            run.Metric("server_cpu_us_per_op", "server CPU µs/delivery", False, (1.15, "<=")),
            run.Metric("rate", "deliveries/s", True),
            run.Metric("p99_ms", "p99 delivery latency ms", False),
            run.Metric("client_cpu_us_per_op", "client CPU µs/delivery", False),
            run.Metric("server_busy", "server CPU busy (fraction of one core)", False),
            run.Metric("client_busy", "load generator busy (fraction of one core)", False),
            run.Metric("wire_bytes_per_message", "bytes/message on the wire", False),
            run.Metric("delivered_ratio", "delivered/expected", True),
        ],
        systems=("shared", "deflate", "none"),
        baseline="none",
    )


def build_cases(args: argparse.Namespace) -> list[run.Case]:
    """Fan-out of ~100-character messages (under MIN_SIZE: ``shared`` sends them plain)
    and of ~2 KB JSON documents (compressed), answers, and idle connections."""
    members = 20 if args.quick else args.members
    messages = 20 if args.quick else min(3000, max(100, 300_000 // members))
    seconds = "1" if args.quick else str(args.seconds)
    fanouts = [
        fanout_case(f"fanout-{members}", members, messages, seconds, []),
        fanout_case(f"fanout-{members}-2k", members, messages, seconds, ["--size", "2000"]),
    ]
    rr = run.Case(
        "rr",
        "rr",
        "memory",
        ["--conns", "2" if args.quick else "50", "--round-trips", "400000", "--seconds", seconds],
        [
            run.Metric("server_cpu_us_per_op", "server CPU µs/round trip", False),
            run.Metric("rate", "round trips/s", True),
            run.Metric("client_cpu_us_per_op", "client CPU µs/round trip", False),
            run.Metric("wire_bytes_per_message", "bytes/answer on the wire", False),
        ],
        systems=("shared", "deflate", "none"),
        baseline="none",
    )
    idle = run.Case(
        "idle",
        "idle",
        "memory",
        ["--conns", str(20 if args.quick else args.idle_conns)]
        + (["--warm", "2", "--settle", "0.1"] if args.quick else []),
        [
            run.Metric("mem_per_conn_kib", "memory/connection KiB", False, (1.30, "<=")),
            run.Metric("server_cpu_us_per_op", "server CPU µs/connection set-up", False),
        ],
        systems=("shared", "deflate", "plain", "shared-ctx"),
        baseline="plain",
    )
    return [*fanouts, rr, idle]


# ----- what no context takeover gives up ------------------------------------------------------


def message_kinds() -> dict[str, list[str]]:
    """200 messages of each kind, as a room would carry them."""
    words = (  # noqa: SIM905
        "the quick brown fox jumps over lazy dogs while xraptor pushes room messages"
    ).split()
    chat = [
        json.dumps(
            {
                "origin": f"user{i % 17}",
                "message": " ".join(words[(i + k) % len(words)] for k in range(8)),
            }
        )
        for i in range(200)
    ]
    ticks = [fanout_text(i, 1_733_000_000_000_000_000 + 7919 * i) for i in range(200)]
    documents = [
        json.dumps(
            {
                "seq": i,
                "items": [
                    {
                        "id": i * 100 + k,
                        "name": f"item {k}",
                        "price": round(k * 1.37, 2),
                        "tags": words[k % 7 : k % 7 + 3],
                    }
                    for k in range(40)
                ],
            }
        )
        for i in range(200)
    ]
    return {
        "chat message (~100 B)": chat,
        "bench tick (~100 B)": ticks,
        "JSON document (~4 KB)": documents,
    }


def compression_ratios() -> list[dict[str, Any]]:
    import xraptor.deflate
    from xraptor.protocol import push_prefix, push_tail

    rows = []
    for kind, messages in message_kinds().items():
        frames = [push_prefix(f"sub-{i % 50}") + push_tail(m) for i, m in enumerate(messages)]
        raw = sum(len(f) for f in frames)
        # websockets' per-connection encoder (compression="deflate"): window 12, memLevel 5
        takeover = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
        with_context = sum(
            len(takeover.compress(f) + takeover.flush(zlib.Z_SYNC_FLUSH)) - 4 for f in frames
        )
        shared = xraptor.deflate.SharedCompressor(15)
        without = sum(len(shared.deflate(f)) for f in frames)
        rows.append(
            {
                "kind": kind,
                "raw_bytes": raw / len(frames),
                "context_takeover_bytes": with_context / len(frames),
                "shared_bytes": without / len(frames),
                "shared_vs_takeover": without / with_context,
            }
        )
    return rows


# ----- results ---------------------------------------------------------------------------------


def summarise(cases: list[run.Case], data: dict[str, dict[str, list[Any]]]) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        samples = data.get(case.name, {})
        for metric in case.metrics:
            row: dict[str, Any] = {"case": case.name, "metric": metric.key, "label": metric.label}
            row["figures"] = {
                s: run.median([x.get(metric.key) for x in samples.get(s, []) if x])
                for s in case.systems
            }
            row["n"] = max(
                (sum(1 for x in samples.get(s, []) if x) for s in case.systems), default=0
            )
            row["ratios"] = {}
            for a, b in RATIOS:
                if a in case.systems and b in case.systems:
                    per_pair = run.ratios(samples, metric.key, b, a)
                    row["ratios"][f"{a}/{b}"] = {"median": run.median(per_pair), "pairs": per_pair}
            head = f"shared/{case.baseline}"
            target_ratio = row["ratios"].get(head, {}).get("median")
            row["target"] = run.verdict(target_ratio, metric.target) if metric.target else ""
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> str:
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        systems = list(mine[0]["figures"])
        ratio_keys = list(mine[0]["ratios"])
        head = ["metric", *systems, *ratio_keys, "target", "n"]
        body = [
            [
                f"{case}: {r['label']}",
                *(run.fmt(r["figures"][s]) for s in systems),
                *(run.fmt(r["ratios"][k]["median"]) for k in ratio_keys),
                r["target"],
                str(r["n"]),
            ]
            for r in mine
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
        lines.append(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        lines.append("-|-".join("-" * w for w in widths))
        lines += [" | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
        lines.append("")
    lines.append("ratio: bytes per push message (200 messages of each kind, 50 members' ids)")
    lines.append("kind | raw | context takeover (deflate) | shared | shared/takeover")
    lines.append("-|-|-|-|-")
    for r in ratio_rows:
        lines.append(
            f"{r['kind']} | {run.fmt(r['raw_bytes'])} | {run.fmt(r['context_takeover_bytes'])} | "
            f"{run.fmt(r['shared_bytes'])} | {run.fmt(r['shared_vs_takeover'])}"
        )
    lines.append("(figures: medians over pairs; ratios: medians of per-pair ratios)")
    return "\n".join(lines)


def pair_lines(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        if r["metric"] not in ("server_cpu_us_per_op", "mem_per_conn_kib"):
            continue
        for key, value in r["ratios"].items():
            pairs = ", ".join(run.fmt(v) for v in value["pairs"])
            out.append(f"  {r['case']}: {r['label']}, {key}: {run.fmt(value['median'])} ({pairs})")
    return "per-pair ratios (median, then each pair in order):\n" + "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per case (default 3)")
    parser.add_argument("--only", default=None, help="comma-separated case names or prefixes")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--idle-conns", type=int, default=5000)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.pairs = args.pairs or (1 if args.quick else 3)
    # what run.Runner reads
    args.loop, args.profile, args.client = "uvloop", False, "offer"
    args.asgi_ws = args.sio_ws = None
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve_main(argv[1:])
        return 0
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = run.RESULTS / "logs" / f"{stamp}-deflate"
    logs.mkdir(parents=True, exist_ok=True)
    cases = run.selected(build_cases(args), args.only)
    if not cases:
        print(f"no case matches --only {args.only!r}", file=sys.stderr)
        return 2
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    runner = DeflateRunner(args, run.Backends(logs), logs, {}, pin)
    print(
        f"bench (compression): {len(cases)} cases x {args.pairs} pairs, logs in {logs}", flush=True
    )
    data: dict[str, dict[str, list[Any]]] = {}
    skips: dict[str, str] = {}
    for case in cases:
        per_system: dict[str, list[Any]] = {s: [] for s in case.systems}
        data[case.name] = per_system
        for pair in range(args.pairs):
            for system in run.system_order(list(case.systems), pair):
                t0 = time.monotonic()
                try:
                    sample = runner.measure(case, system, pair)
                except run.Skip as error:
                    skips[f"{case.name}/{system}"] = str(error)
                    print(f"{case.name} [{system}] skipped: {error}", flush=True)
                    per_system[system].append(None)
                    continue
                per_system[system].append(sample)
                shown = ", ".join(
                    f"{m.key}={run.fmt(sample.get(m.key))}" for m in case.metrics if m.key in sample
                )
                print(
                    f"{case.name} pair {pair + 1} [{system}] {shown} "
                    f"({time.monotonic() - t0:.1f} s)",
                    flush=True,
                )
    rows = summarise(cases, data)
    ratio_rows = compression_ratios()
    text = table(rows, ratio_rows)
    print()
    print(text)
    print()
    print(pair_lines(rows))
    if skips:
        print("\nskipped:")
        for key, reason in skips.items():
            print(f"  {key}: {reason}")
    out = args.out or run.RESULTS / f"{stamp}-deflate{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "argv": argv,
                "pairs": args.pairs,
                "environment": run.environment(args, "picows-deflate"),
                "rows": rows,
                "ratio": ratio_rows,
                "samples": data,
                "skipped": skips,
                "table": text,
                "seconds": time.monotonic() - started,
            },
            indent=2,
        )
    )
    print(f"\nresults: {out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
