"""Instructions per room delivery in the server process (valgrind callgrind), by policy:
a figure that other processes on the machine do not disturb.

    python bench/deflate_callgrind.py                       # shared, deflate, none, plain
    python bench/deflate_callgrind.py --core /other/checkout/core --systems plain

The server (the bench app, memory antenna, asyncio loop) runs under callgrind; clients
run in this process, outside it: ``--members`` websockets clients (offering
permessage-deflate, except for ``plain``) join the room, then one posts messages one at
a time (``--size`` characters of JSON, 2,000 by default), each awaited at every
member. Two runs per system, with ``--few`` and
``--many`` messages; (instructions(many) - instructions(few)) / (extra messages *
members) is the server's cost per delivery, start-up and connection set-up cancelled.
``--core`` imports xraptor from another checkout (``plain`` then compares the path of
non-compressing clients with that checkout's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import free_port  # noqa: E402
from deflate_loadgen import document_text  # noqa: E402

SERVER = """
import asyncio, signal, sys
sys.path.insert(0, {bench!r})
import servers

async def main():
    app = servers.xraptor_app({port}, "memory", "")
    if {policy!r} != "default":
        app.compression = None if {policy!r} == "none" else {policy!r}
    await app.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("LISTENING", flush=True)
    await stop.wait()
    await app.close()

asyncio.run(main())
"""

#: the server policy and whether the clients offer permessage-deflate, per system
SYSTEMS = {
    "shared": ("shared", True),
    "deflate": ("deflate", True),
    "none": ("none", True),
    "plain": ("default", False),
}


def request(request_id: str, route: str, method: str, payload: str) -> str:
    body = {"request_id": request_id, "payload": payload, "header": {}, "route": route}
    return json.dumps({**body, "method": method})


def is_push_of(frame: str | bytes, text: str) -> bool:
    data = json.loads(frame)
    if data.get("method") != "SUB":
        return False
    message: str = json.loads(data["payload"])["message"]
    return message == text


async def drive(port: int, members: int, messages: int, offer: bool, size: int) -> None:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/"
    compression = "deflate" if offer else None
    conns = [await connect(url, compression=compression, open_timeout=120) for _ in range(members)]
    room = json.dumps({"chat_id": "cg"})
    for i, ws in enumerate(conns):
        await ws.send(request(f"m{i}", "/chat_messages", "SUB", room))
        await ws.send(request(f"e{i}", "/echo", "GET", "x"))  # answered after the SUB
        await asyncio.wait_for(ws.recv(), 120)
    for n in range(messages):
        text = document_text(n, 0, size)
        payload = json.dumps({"chat_id": "cg", "client_id": "cg", "message": text})
        await conns[0].send(request(f"p{n}", "/send_message_to_chat_room", "POST", payload))
        for ws in conns:
            while not is_push_of(await asyncio.wait_for(ws.recv(), 120), text):
                pass
    for ws in conns:
        await ws.close()


def instructions(system: str, members: int, messages: int, size: int, core: str | None) -> int:
    policy, offer = SYSTEMS[system]
    port = free_port()
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    script = SERVER.format(bench=str(BENCH), port=port, policy=policy)
    env = {**os.environ, **({"PYTHONPATH": core} if core else {})}
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            script,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "LISTENING" not in line:
            raise SystemExit(f"the server did not start: {line!r}")
        asyncio.run(drive(port, members, messages, offer, size))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(300)
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--systems", default="plain,none,shared,deflate")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--few", type=int, default=10)
    parser.add_argument("--many", type=int, default=60)
    parser.add_argument("--size", type=int, default=2000, help="characters per message")
    parser.add_argument("--core", default=None, help="import xraptor from this folder")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    for system in args.systems.split(","):
        started = time.monotonic()
        few = instructions(system, args.members, args.few, args.size, args.core)
        many = instructions(system, args.members, args.many, args.size, args.core)
        figures[system] = (many - few) / ((args.many - args.few) * args.members)
        print(
            f"{system}: {figures[system] / 1000:.1f}k instructions/delivery "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    for a, b in (("shared", "none"), ("deflate", "none"), ("none", "plain")):
        if a in figures and b in figures:
            print(f"{a}/{b}: {figures[a] / figures[b]:.3f}")


if __name__ == "__main__":
    main()
