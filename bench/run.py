"""Benchmarks: this xraptor against raw ``websockets``, the original xraptor 0.4.1,
python-socketio on uvicorn and encode/broadcaster on Starlette (what users would pick
instead); this xraptor on the picows transport (``xraptor-picows``) in every case; in
``rr`` and ``fanout-memory-*`` also this xraptor served through ``asgi_app()`` by
uvicorn (``xraptor-asgi``). The 0.4.1, socket.io and broadcaster servers each run in
a virtualenv of their own under ``bench/`` (created on first use).

    python bench/run.py                   # everything, 3 pairs (under 10 minutes on 2 cores)
    python bench/run.py --quick           # tiny sizes, memory only, no 0.4.1 (a smoke run)
    python bench/run.py --only rr --pairs 5
    python bench/run.py --only fanout-memory,idle
    python bench/run.py --only mixed --pairs 5
    python bench/run.py --only rr,fanout-memory --systems xraptor,raw,xraptor-asgi
    python bench/run.py --only rr,fanout --systems xraptor,raw,xraptor-picows,sio,broadcaster

Every server runs in its own process and the load generator (``loadgen.py``) in
another, on loopback only. The systems of one case run back to back, in an order
that alternates from pair to pair, so machine drift cancels; the table shows the
median over pairs of each figure and of each per-pair ratio. Results go to
``bench/results/<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import importlib.util
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped,unused-ignore]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


@dataclass(frozen=True)
class PeerVenv:
    """A system served from a virtualenv of its own: its packages may not share ours."""

    path: Path
    packages: tuple[str, ...]
    #: run by the venv's python: succeeds when the venv holds what the server needs
    check: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def stamp(self) -> Path:
        """Written after an install: the requirements it installed (changed ones reinstall)."""
        return self.path / "xraptor-bench-requirements.txt"


#: the peers' virtualenvs (bench/.venv-*), created on first use unless --no-install
PEER_VENVS = {
    "x041": PeerVenv(
        BENCH / ".venv-041",
        ("xraptor[redis-version,uvloop]==0.4.1", "nats-py", "psutil"),
        "import importlib.metadata as m, redis, nats, psutil, xraptor; "
        "assert m.version('xraptor') == '0.4.1'",
    ),
    "sio": PeerVenv(
        BENCH / ".venv-sio",
        ("python-socketio>=5.11,<6", "uvicorn[standard]>=0.30", "redis>=5"),
        "import socketio, uvicorn, uvloop, websockets, redis.asyncio",
    ),
    "broadcaster": PeerVenv(
        BENCH / ".venv-broadcaster",
        # redis-py 6 and later: broadcaster 0.3.1's Redis listener ends before its first
        # subscription lands and never delivers anything (seen with 8.1); 5.x works
        ("broadcaster==0.3.1", "redis>=5,<6", "starlette>=0.37", "uvicorn[standard]>=0.30"),
        "import broadcaster, starlette, uvicorn, uvloop, websockets, redis.asyncio",
    ),
}

#: in the order they run in a pair's first half (reversed in the second): raw sits
#: between xraptor and xraptor-asgi, so both are measured next to it
SYSTEMS = ("xraptor", "raw", "xraptor-asgi", "xraptor-picows", "x041", "sio", "broadcaster")
LABELS = {
    "xraptor": "xraptor",
    "raw": "raw ws",
    "xraptor-asgi": "xraptor ASGI",
    "xraptor-picows": "xraptor picows",
    "x041": "0.4.1",
    "sio": "socket.io",
    "broadcaster": "broadcaster",
}
#: what the idle cases compare
CLASSIC = ("xraptor", "raw", "xraptor-picows", "x041")
#: request/response and memory fan-out: everything, xraptor through ASGI included
EVERYTHING = SYSTEMS
#: Redis fan-out: socket.io (AsyncRedisManager) and broadcaster (redis://) have Redis
WITH_REDIS_PEERS = ("xraptor", "raw", "xraptor-picows", "x041", "sio", "broadcaster")
#: NATS fan-out: neither socket.io nor broadcaster has a NATS backend
WITH_NATS = ("xraptor", "raw", "xraptor-picows", "x041")
#: PostgreSQL fan-out: neither 0.4.1, nor socket.io, nor broadcaster has a PostgreSQL backend
WITH_POSTGRES = ("xraptor", "raw", "xraptor-picows")
#: the wire each system speaks (loadgen.py --wire)
WIRES = {"raw": "raw", "sio": "sio", "broadcaster": "raw"}
#: what a server process of our own venv imports beyond the core: system -> {module: package}
REQUIRES = {
    "xraptor-asgi": {"uvicorn": "uvicorn"},
    "xraptor-picows": {"xraptor_picows": "xraptor-picows", "picows": "picows"},
}
#: the per-pair ratios the table shows: key -> (numerator, denominator)
RATIOS = {
    "vs_raw": ("xraptor", "raw"),
    "asgi_vs_raw": ("xraptor-asgi", "raw"),
    "picows_vs_raw": ("xraptor-picows", "raw"),
    "picows_vs_xraptor": ("xraptor-picows", "xraptor"),
    "vs_041": ("xraptor", "x041"),
    "vs_sio": ("xraptor", "sio"),
    "vs_broadcaster": ("xraptor", "broadcaster"),
}
#: the short names in the ratio columns' headings
SHORT = {
    "xraptor": "xraptor",
    "raw": "raw",
    "xraptor-asgi": "asgi",
    "xraptor-picows": "picows",
    "x041": "0.4.1",
    "sio": "socket.io",
    "broadcaster": "broadcaster",
}

sys.path.insert(0, str(BENCH))
from common import DEFAULT_ASGI_WS, free_port  # noqa: E402


def _die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when run.py dies (Linux), so nothing lingers."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return subprocess.Popen(cmd, preexec_fn=preexec, **kwargs)


class Skip(Exception):
    """A measurement that cannot run here; the reason is printed and recorded."""


# ----- what is measured -----------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    #: (bound, comparison) for xraptor/<the case's baseline>, e.g. (0.9, ">=")
    target: tuple[float, str] | None = None
    #: more targets on other ratios: (ratio key of RATIOS, (bound, comparison))
    more_targets: tuple[tuple[str, tuple[float, str]], ...] = ()


@dataclass
class Case:
    name: str
    scenario: str
    antenna: str
    args: list[str]
    metrics: list[Metric]
    systems: tuple[str, ...] = CLASSIC
    #: at least this many pairs (cheap, noisy cases get more)
    min_pairs: int = 1
    #: the system a target's ratio is taken against (xraptor / baseline)
    baseline: str = "raw"


def rr_metrics() -> list[Metric]:
    return [
        # issue 13: the picows transport serves 1.5x raw websockets' round trips
        Metric("rate", "round trips/s", True, (0.90, ">="), (("picows_vs_raw", (1.50, ">=")),)),
        Metric("p50_us", "p50 latency µs", False),
        Metric("p99_us", "p99 latency µs", False),
        Metric("server_cpu_us_per_op", "server CPU µs/round trip", False),
        Metric("client_cpu_us_per_op", "client CPU µs/round trip", False),
    ]


def mixed_metrics() -> list[Metric]:
    return [
        Metric("rate", "answers/s", True),
        Metric("fast_p50_us", "fast p50 latency µs", False),
        Metric("fast_p99_us", "fast p99 latency µs", False),
        Metric("slow_p50_us", "slow p50 latency µs", False),
        Metric("server_cpu_us_per_op", "server CPU µs/answer", False),
        Metric("client_cpu_us_per_op", "client CPU µs/answer", False),
    ]


def mixed_case(conns: int, inflight: int, limit: int, seconds: float) -> Case:
    """Pipelined requests, alternately to a fast handler and one that awaits 5 ms."""
    return Case(
        "mixed",
        "mixed",
        "memory",
        [
            "--conns",
            str(conns),
            "--inflight",
            str(inflight),
            "--round-trips",
            str(limit),
            "--seconds",
            str(seconds),
        ],
        mixed_metrics(),
        systems=("xraptor", "xraptor-picows", "sio"),
        baseline="sio",
    )


def fanout_metrics(antenna: str, members: int) -> list[Metric]:
    rate_target: tuple[float, str] | None = None
    more: tuple[tuple[str, tuple[float, str]], ...] = ()
    if members >= 1000:
        rate_target = (0.80, ">=") if antenna == "memory" else (0.70, ">=")
        # issue 13: picows delivers 1.3x websockets.broadcast in memory, and on Redis and
        # NATS no less than the websockets transport (0.95: the noise of one median)
        more = (
            (("picows_vs_raw", (1.30, ">=")),)
            if antenna == "memory"
            else (("picows_vs_xraptor", (0.95, ">=")),)
        )
    return [
        Metric("rate", "deliveries/s", True, rate_target, more),
        Metric("p99_ms", "p99 delivery latency ms", False, (1.5, "<=")),
        Metric("server_cpu_us_per_op", "server CPU µs/delivery", False),
        # of which the kernel's (a socket write per member and message, mostly)
        Metric("server_sys_us_per_op", "server kernel CPU µs/delivery", False),
        Metric("client_cpu_us_per_op", "client CPU µs/delivery", False),
        Metric("delivered_ratio", "delivered/expected", True),
    ]


def build_cases(args: argparse.Namespace) -> list[Case]:
    cases: list[Case] = []
    if args.quick:
        cases.append(
            Case(
                "rr",
                "rr",
                "memory",
                ["--conns", "2", "--round-trips", "100", "--seconds", "1"],
                rr_metrics(),
                systems=EVERYTHING,
            )
        )
        cases.append(mixed_case(2, 4, 400, 0.5))
        cases.append(
            Case(
                "fanout-memory-10",
                "fanout",
                "memory",
                ["--members", "10", "--messages", "20", "--seconds", "1"],
                fanout_metrics("memory", 10),
                systems=EVERYTHING,
            )
        )
        cases.append(
            Case(
                "idle-plain",
                "idle",
                "memory",
                ["--conns", "20", "--warm", "2", "--settle", "0.1"],
                [
                    Metric("mem_per_conn_kib", "memory/connection KiB", False, (1.10, "<=")),
                    Metric("server_cpu_us_per_op", "server CPU µs/connection set-up", False),
                ],
            )
        )
        return cases
    cases.append(
        Case(
            "rr",
            "rr",
            "memory",
            ["--conns", str(args.conns), "--round-trips", "400000", "--seconds", str(args.seconds)],
            rr_metrics(),
            systems=EVERYTHING,
            min_pairs=5,
        )
    )
    cases.append(mixed_case(args.mixed_conns, args.mixed_inflight, 400_000, args.seconds))
    for antenna in ("memory", "redis", "nats", "postgres"):
        for members in (100, 1000):
            messages = min(3000, max(100, 300_000 // members))
            cases.append(
                Case(
                    f"fanout-{antenna}-{members}",
                    "fanout",
                    antenna,
                    [
                        "--members",
                        str(members),
                        "--messages",
                        str(messages),
                        "--seconds",
                        str(args.seconds),
                        "--window",
                        str(max(2, args.window_deliveries // members)),
                    ],
                    fanout_metrics(antenna, members),
                    systems={
                        "memory": EVERYTHING,
                        "redis": WITH_REDIS_PEERS,
                        "nats": WITH_NATS,
                        "postgres": WITH_POSTGRES,
                    }[antenna],
                )
            )
    conns = str(args.idle_conns)
    cases.append(
        Case(
            "idle-plain",
            "idle",
            "memory",
            ["--conns", conns],
            [
                Metric("mem_per_conn_kib", "memory/connection KiB", False, (1.10, "<=")),
                Metric("server_cpu_us_per_op", "server CPU µs/connection set-up", False),
            ],
        )
    )
    cases.append(
        Case(
            "idle-sub",
            "idle",
            "memory",
            ["--conns", conns, "--subscribe"],
            [
                Metric("mem_per_conn_kib", "memory/connection KiB", False, (1.30, "<=")),
                Metric("server_cpu_us_per_op", "server CPU µs/connection set-up", False),
            ],
        )
    )
    for antenna in ("redis", "nats"):
        cases.append(
            Case(
                f"backend-{antenna}",
                "idle",
                antenna,
                ["--conns", str(args.backend_conns), "--subscribe", "--settle", "0.5"],
                [
                    Metric("mem_per_conn_kib", "memory/subscribed connection KiB", False),
                    Metric("backend_before", "backend connections, 20 streams", False),
                    Metric(
                        "backend_after",
                        f"backend connections, {args.backend_conns + 20} streams",
                        False,
                    ),
                ],
            )
        )
    return cases


def selected(cases: list[Case], only: str | None) -> list[Case]:
    if not only:
        return cases
    tokens = [t.strip() for t in only.split(",") if t.strip()]
    names = {c.name for c in cases}
    return [
        c
        for c in cases
        if any(c.name == t or (t not in names and c.name.startswith(t)) for t in tokens)
    ]


# ----- backends -------------------------------------------------------------------------------


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_port(port: int, seconds: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Skip(f"exited with code {proc.returncode} before listening")
        if port_open(port):
            return
        time.sleep(0.05)
    raise Skip(f"port {port} not open after {seconds:.0f} s")


@dataclass
class Backends:
    """Private redis-server / nats-server on free loopback ports, else the shared ones."""

    logs: Path
    urls: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, wanted: set[str]) -> None:
        for name in sorted(wanted):
            try:
                self._start_one(name)
            except Skip as error:
                self.reasons[name] = str(error)
                print(f"  {name}: unavailable: {error}", flush=True)

    def _start_one(self, name: str) -> None:
        env = os.environ.get(f"XRAPTOR_BENCH_{name.upper()}_URL")
        if env:
            port = int(env.rsplit(":", 1)[1].split("/")[0])
            self._use(name, env, port, "from the environment")
            return
        if name == "postgres":
            # a running server (no private cluster: initdb takes seconds and, as root, a
            # user of its own); XRAPTOR_BENCH_POSTGRES_URL names another
            if port_open(5432):
                url = "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable"
                self._use(name, url, 5432, "shared instance")
                return
            raise Skip("no PostgreSQL on 127.0.0.1:5432: set XRAPTOR_BENCH_POSTGRES_URL")
        binary = shutil.which("redis-server" if name == "redis" else "nats-server")
        if binary is not None:
            port = free_port()
            if name == "redis":
                cmd = [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--maxclients",
                    "10000",
                ]
            else:
                cmd = [binary, "-a", "127.0.0.1", "-p", str(port)]
            log = (self.logs / f"{name}-server.log").open("wb")
            proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(proc)
            wait_port(port, 10, proc)
            scheme = "redis" if name == "redis" else "nats"
            suffix = "/0" if name == "redis" else ""
            self._use(name, f"{scheme}://127.0.0.1:{port}{suffix}", port, "private instance")
            return
        port = 6379 if name == "redis" else 4222
        if port_open(port):
            suffix = "/0" if name == "redis" else ""
            self._use(name, f"{name}://127.0.0.1:{port}{suffix}", port, "shared instance")
            return
        raise Skip(f"no {name} server: install it or set XRAPTOR_BENCH_{name.upper()}_URL")

    def _use(self, name: str, url: str, port: int, how: str) -> None:
        self.urls[name] = url
        self.ports[name] = port
        print(f"  {name}: {url} ({how})", flush=True)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ----- the peers' virtualenvs ------------------------------------------------------------


def peer_python(system: str, create: bool) -> Path:
    """The python of ``system``'s own virtualenv, created (``--clear``) when it is missing
    or does not hold what the server needs."""
    venv = PEER_VENVS[system]
    python = venv.python

    wanted = "\n".join(venv.packages)

    def usable() -> bool:
        if not python.exists() or not venv.stamp.exists():
            return False
        if venv.stamp.read_text() != wanted:
            return False
        probe = subprocess.run([python, "-c", venv.check], capture_output=True, timeout=60)
        return probe.returncode == 0

    if usable():
        return python
    if not create:
        raise Skip(f"no virtualenv at {venv.path} (run without --no-install to create it)")
    print(f"  creating {venv.path} with {' '.join(venv.packages)}", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", venv.path], check=True, timeout=120
        )
        subprocess.run(
            [python, "-m", "pip", "install", "-q", *venv.packages], check=True, timeout=600
        )
    except (subprocess.SubprocessError, OSError) as error:
        raise Skip(f"could not install {' '.join(venv.packages)}: {error}") from error
    venv.stamp.write_text(wanted)
    if not usable():
        raise Skip(f"{venv.path} installed but its packages do not import")
    return python


def peer_versions(pythons: dict[str, Path]) -> dict[str, dict[str, str]]:
    """What each peer's virtualenv holds (``pip freeze``), for the results file."""
    out: dict[str, dict[str, str]] = {}
    for system, python in pythons.items():
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            frozen = subprocess.run(
                [python, "-m", "pip", "freeze"], capture_output=True, text=True, timeout=60
            ).stdout
            out[system] = dict(line.split("==", 1) for line in frozen.splitlines() if "==" in line)
    return out


# ----- one measurement ------------------------------------------------------------------------


@dataclass
class Runner:
    args: argparse.Namespace
    backends: Backends
    logs: Path
    #: the python of each peer served from its own virtualenv (see PEER_VENVS)
    peers: dict[str, Path]
    pin: bool
    stem: str = ""
    #: the load generator script (bench/deflate.py runs its own)
    loadgen: Path = BENCH / "loadgen.py"

    def server_cmd(self, system: str, port: int, antenna: str) -> list[str]:
        url = self.backends.urls.get(antenna, "")
        tail = ["--port", str(port), "--antenna", antenna, "--url", url, "--loop", self.args.loop]
        if system == "x041":
            return [str(self.peers["x041"]), str(BENCH / "_041_app.py"), *tail]
        python = str(self.peers.get(system, sys.executable))
        if system in ("sio", "broadcaster"):
            # servers.py too, on the same --loop as xraptor, from the peer's own venv
            tail += ["--ws", self.args.sio_ws]
        elif system == "xraptor-asgi":
            tail += ["--ws", self.args.asgi_ws]
        if self.args.profile:
            tail += ["--profile", str(self.logs / f"{self.stem}-server.pstats")]
        return [python, str(BENCH / "servers.py"), system, *tail]

    def measure(self, case: Case, system: str, pair: int) -> dict[str, Any]:
        if case.antenna != "memory" and case.antenna not in self.backends.urls:
            raise Skip(self.backends.reasons.get(case.antenna, f"no {case.antenna} backend"))
        port = free_port()
        stem = self.stem = f"{case.name}-{system}-{pair}"
        with (
            (self.logs / f"{stem}-server.log").open("wb") as server_log,
            (self.logs / f"{stem}-loadgen.log").open("wb") as client_log,
        ):
            server = spawn(
                self.server_cmd(system, port, case.antenna),
                stdout=server_log,
                stderr=subprocess.STDOUT,
                cwd=BENCH,
            )
            try:
                self._pin(server.pid, 0)
                try:
                    wait_port(port, 30, server)
                except Skip as error:
                    raise Skip(
                        f"server {error}: {tail(self.logs / f'{stem}-server.log')}"
                    ) from None
                return self._drive(case, system, server, port, client_log, stem)
            finally:
                stop_process(server)

    def _pin(self, pid: int, cpu: int) -> None:
        if self.pin:
            with contextlib.suppress(psutil.Error, AttributeError, OSError):
                psutil.Process(pid).cpu_affinity([cpu])

    def _drive(
        self,
        case: Case,
        system: str,
        server: subprocess.Popen[bytes],
        port: int,
        client_log: Any,
        stem: str,
    ) -> dict[str, Any]:
        wire = WIRES.get(system, "framework")
        cmd = [
            sys.executable,
            str(self.loadgen),
            case.scenario,
            "--url",
            f"ws://127.0.0.1:{port}",
            "--wire",
            wire,
            "--client",
            self.args.client,
            *case.args,
        ]
        client = spawn(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=client_log,
            cwd=BENCH,
            text=True,
            bufsize=1,
        )
        assert client.stdin is not None and client.stdout is not None
        try:
            self._pin(client.pid, 1)
            proc = psutil.Process(server.pid)
            backend_port = self.backends.ports.get(case.antenna)
            expect(
                client, client.stdout, "READY", 180, lambda: tail(self.logs / f"{stem}-loadgen.log")
            )
            before = snapshot(proc, backend_port)
            client.stdin.write("GO\n")
            client.stdin.flush()
            line = expect(
                client,
                client.stdout,
                "RESULT",
                180,
                lambda: tail(self.logs / f"{stem}-loadgen.log"),
            )
            after = snapshot(proc, backend_port)
            result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
            with contextlib.suppress(OSError):
                client.stdin.write("STOP\n")
                client.stdin.flush()
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                client.kill()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(5)
        ops = result.get("ops") or 0
        cpu = after["cpu"] - before["cpu"]
        result["server_cpu_s"] = cpu
        result["server_cpu_us_per_op"] = cpu / ops * 1e6 if ops else None
        # the kernel's share (socket writes and reads) of that CPU
        system_cpu = after["sys"] - before["sys"]
        result["server_sys_us_per_op"] = system_cpu / ops * 1e6 if ops else None
        if ops and result.get("elapsed_s") and case.scenario != "idle":
            result["server_busy"] = cpu / result["elapsed_s"]
            result["client_busy"] = result["client_cpu_s"] / result["elapsed_s"]
        result["rss_before"] = before["rss"]
        result["rss_after"] = after["rss"]
        if case.scenario == "idle":
            connected = result.get("connected") or 0
            delta = after["rss"] - before["rss"]
            result["mem_per_conn_kib"] = delta / connected / 1024 if connected else None
        if backend_port is not None:
            result["backend_before"] = before["backend"]
            result["backend_after"] = after["backend"]
        return result


def snapshot(proc: psutil.Process, backend_port: int | None) -> dict[str, Any]:
    times = proc.cpu_times()
    backend = None
    if backend_port is not None:
        backend = sum(
            1 for c in proc.net_connections(kind="tcp") if c.raddr and c.raddr.port == backend_port
        )
    return {
        "cpu": times.user + times.system,
        "sys": times.system,
        "rss": proc.memory_info().rss,
        "backend": backend,
    }


def expect(
    proc: subprocess.Popen[str], stream: IO[str], word: str, seconds: float, why: Callable[[], str]
) -> str:
    """Read lines from ``stream`` until one starts with ``word`` (bounded in time)."""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                continue
            line = stream.readline()
            if not line:
                proc.wait(5)
                raise Skip(f"load generator exited ({proc.returncode}) before {word}: {why()}")
            if line.startswith(word):
                return line.strip()
    raise Skip(f"no {word} from the load generator within {seconds:.0f} s: {why()}")


def tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])
    return ""


# ----- results -----------------------------------------------------------------------------------


def median(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def ratios(
    samples: dict[str, list[dict[str, Any] | None]], key: str, other: str, system: str = "xraptor"
) -> list[float]:
    """Per-pair ratios ``system``/``other`` (by default xraptor/other) for ``key``."""
    out = []
    for mine, theirs in zip(samples.get(system, []), samples.get(other, []), strict=False):
        if mine and theirs and mine.get(key) is not None and theirs.get(key):
            out.append(mine[key] / theirs[key])
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def verdict(ratio: float | None, target: tuple[float, str] | None) -> str:
    if target is None:
        return ""
    bound, op = target
    text = f"{op} {bound:.2f}"
    if ratio is None:
        return f"{text} (not measured)"
    ok = ratio >= bound if op == ">=" else ratio <= bound
    return f"{text} {'PASS' if ok else 'FAIL'}"


def summarise(
    cases: list[Case], data: dict[str, dict[str, list[dict[str, Any] | None]]]
) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        samples = data.get(case.name, {})
        for metric in case.metrics:
            row: dict[str, Any] = {
                "case": case.name,
                "metric": metric.key,
                "label": f"{case.name}: {metric.label}",
                "systems": list(case.systems),
            }
            for system in SYSTEMS:
                row[system] = median([s.get(metric.key) for s in samples.get(system, []) if s])
                row[f"{system}_n"] = sum(1 for s in samples.get(system, []) if s)
            row["pair_ratios"] = {}
            for name, (numerator, denominator) in RATIOS.items():
                per_pair = ratios(samples, metric.key, denominator, numerator)
                row[name] = median(per_pair)
                if per_pair:
                    row["pair_ratios"][name] = per_pair
            verdicts = [verdict(row[RATIO_KEYS[case.baseline]], metric.target)]
            for key, target in metric.more_targets:
                numerator, denominator = RATIOS[key]
                if numerator in case.systems and denominator in case.systems:
                    named = f"{SHORT[numerator]}/{SHORT[denominator]} "
                    verdicts.append(named + verdict(row[key], target))
            row["target"] = "; ".join(v for v in verdicts if v)
            if metric.key == "backend_after":
                before = row.get("xraptor")
                mine = [s for s in samples.get("xraptor", []) if s]
                constant = bool(mine) and all(
                    s["backend_after"] == s["backend_before"] for s in mine
                )
                row["target"] = (
                    "constant " + ("PASS" if constant else "FAIL")
                    if before is not None
                    else "constant (not measured)"
                )
            rows.append(row)
    return rows


RATIO_KEYS = {"raw": "vs_raw", "x041": "vs_041", "sio": "vs_sio"}


def table(rows: list[dict[str, Any]]) -> str:
    # a column for every system a selected case compares
    shown = [s for s in SYSTEMS if any(s in r["systems"] for r in rows)]
    keys = [k for k, (a, b) in RATIOS.items() if a in shown and b in shown]
    head = [
        "metric",
        *(LABELS[s] for s in shown),
        *(f"{SHORT[RATIOS[k][0]]}/{SHORT[RATIOS[k][1]]}" for k in keys),
        "target",
        "n",
    ]
    body = [
        [
            r["label"],
            *(fmt(r[s]) for s in shown),
            *(fmt(r[k]) for k in keys),
            r["target"],
            str(max(r[f"{system}_n"] for system in SYSTEMS)),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "-|-".join("-" * w for w in widths),
    ]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    lines.append(
        "(n: pairs measured; figures are medians over pairs, ratios medians of per-pair ratios)"
    )
    return "\n".join(lines)


#: the metrics whose per-pair ratios are listed under the table
PAIR_METRICS = ("rate", "server_cpu_us_per_op")


def pair_ratio_lines(rows: list[dict[str, Any]]) -> str:
    """Each headline metric's per-pair ratios (the spread behind the medians)."""
    lines = []
    for r in rows:
        if r["metric"] not in PAIR_METRICS:
            continue
        for key, values in r["pair_ratios"].items():
            numerator, denominator = RATIOS[key]
            lines.append(
                f"  {r['label']}, {SHORT[numerator]}/{SHORT[denominator]}: "
                f"{fmt(median(values))} ({', '.join(fmt(v) for v in values)})"
            )
    return (
        "per-pair ratios (median, then each pair in order):\n" + "\n".join(lines) if lines else ""
    )


def environment(args: argparse.Namespace, client: str) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "client": client,
        "server_loop": args.loop,
        "asgi_ws": args.asgi_ws,
        "sio_ws": args.sio_ws,
        "packages": {
            n: version(n)
            for n in (
                "xraptor",
                "xraptor-redis",
                "xraptor-nats",
                "xraptor-postgres",
                "websockets",
                "picows",
                "uvloop",
                "redis",
                "nats-py",
                "asyncpg",
                "orjson",
                "psutil",
                "xraptor-picows",
                "uvicorn",
            )
        },
    }


# ----- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, memory antenna, none of the peers served from their own "
        "virtualenvs (0.4.1, socket.io, broadcaster): a smoke run",
    )
    parser.add_argument(
        "--pairs", type=int, default=None, help="pairs per case (default 3, and 5 for rr)"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated case names or prefixes: rr, mixed, fanout-memory, "
        "fanout-redis-1000, idle, backend ...",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, run in this order: {','.join(SYSTEMS)}",
    )
    parser.add_argument("--no-041", action="store_true", help="skip xraptor 0.4.1")
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not create the peers' virtualenvs (bench/.venv-041, -sio, -broadcaster) "
        "when they are missing",
    )
    parser.add_argument("--client", choices=["auto", "picows", "websockets"], default="auto")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the servers' event loop (uvloop when installed)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the server to CPU 0 and the load generator to CPU 1",
    )
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="measured seconds per request/response and fan-out run",
    )
    parser.add_argument(
        "--window-deliveries",
        type=int,
        default=8000,
        help="fan-out deliveries in flight: the publisher keeps this / members messages "
        "unfinished (at least 2)",
    )
    parser.add_argument(
        "--mixed-conns", type=int, default=10, help="mixed: connections (default 10)"
    )
    parser.add_argument(
        "--mixed-inflight",
        type=int,
        default=16,
        help="mixed: requests outstanding per connection (default 16)",
    )
    parser.add_argument(
        "--sio-ws",
        choices=["auto", "websockets-sansio", "websockets", "wsproto"],
        default="auto",
        help="uvicorn's WebSocket implementation for socket.io and broadcaster "
        "(auto: websockets-sansio)",
    )
    parser.add_argument(
        "--asgi-ws",
        choices=["websockets-sansio", "websockets", "wsproto"],
        default=DEFAULT_ASGI_WS,
        help="xraptor-asgi: uvicorn's WebSocket implementation (default %(default)s, "
        "the fastest of the three here; RESULTS.md)",
    )
    parser.add_argument("--idle-conns", type=int, default=5000)
    parser.add_argument("--backend-conns", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the xraptor and raw servers (stats beside the logs; slows them down, "
        "so compare profiles, not figures)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=1800,
        help="seconds; cases not started by then are skipped",
    )
    args = parser.parse_args(argv)
    args.pairs_given = args.pairs is not None or args.quick
    if args.pairs is None:
        args.pairs = 1 if args.quick else 3
    return args


def system_order(systems: list[str], pair: int) -> Iterator[str]:
    return iter(systems if pair % 2 == 0 else list(reversed(systems)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    # SIGTERM (a nox or CI timeout) unwinds through the finally blocks that stop children
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = RESULTS / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.no_041:
        systems = [s for s in systems if s != "x041"]
    left_out: dict[str, str] = {}
    if args.quick:
        # a smoke run creates no virtualenv: the peers are left out, and say so
        for system in PEER_VENVS:
            if system in systems:
                systems.remove(system)
                left_out[system] = "a quick run leaves out the peers served from their own venvs"
    cases = selected(build_cases(args), args.only)
    if not cases:
        print(f"no case matches --only {args.only!r}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(BENCH))
    from loadgen import pick_client

    client, _ = pick_client(args.client)
    print(
        f"bench: {len(cases)} cases x {args.pairs} pairs, systems {', '.join(systems)}, "
        f"client {client}, logs in {logs}",
        flush=True,
    )
    skips: dict[str, str] = {}
    peers: dict[str, Path] = {}
    for system in PEER_VENVS:
        if system in systems and any(system in c.systems for c in cases):
            try:
                peers[system] = peer_python(system, create=not args.no_install)
            except Skip as error:
                skips[system] = str(error)
                print(f"  {LABELS[system]} skipped: {error}", flush=True)
                systems.remove(system)
    for system, modules in REQUIRES.items():
        if system not in systems or not any(system in c.systems for c in cases):
            continue
        missing = [p for m, p in modules.items() if importlib.util.find_spec(m) is None]
        if missing:
            reason = f"{' and '.join(missing)} not installed (nox -s bench installs them)"
            systems.remove(system)
            print(f"  {LABELS[system]} left out: {reason}", flush=True)
            # a smoke run where they are missing still covers the other systems and says
            # so; a real run records a skip
            (left_out if args.quick else skips)[system] = reason
    backends = Backends(logs)
    backends.start({c.antenna for c in cases} - {"memory"})
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    runner = Runner(args, backends, logs, peers, pin)
    data: dict[str, dict[str, list[dict[str, Any] | None]]] = {}
    try:
        for case in cases:
            if time.monotonic() - started > args.time_budget:
                skips[case.name] = "time budget spent"
                print(f"{case.name}: skipped (time budget spent)", flush=True)
                continue
            per_system: dict[str, list[dict[str, Any] | None]] = {s: [] for s in systems}
            data[case.name] = per_system
            pairs = args.pairs if args.pairs_given else max(args.pairs, case.min_pairs)
            for pair in range(pairs):
                for system in system_order([s for s in systems if s in case.systems], pair):
                    key = f"{case.name}/{system}"
                    if key in skips:
                        per_system[system].append(None)
                        continue
                    t0 = time.monotonic()
                    try:
                        sample = runner.measure(case, system, pair)
                    except Skip as error:
                        skips[key] = str(error)
                        print(f"{case.name} [{LABELS[system]}] skipped: {error}", flush=True)
                        per_system[system].append(None)
                        continue
                    per_system[system].append(sample)
                    keys = [m.key for m in case.metrics] + ["server_busy", "client_busy"]
                    shown = ", ".join(f"{k}={fmt(sample.get(k))}" for k in keys if k in sample)
                    print(
                        f"{case.name} pair {pair + 1} [{LABELS[system]}] {shown} "
                        f"({time.monotonic() - t0:.1f} s)",
                        flush=True,
                    )
    finally:
        backends.stop()
    rows = summarise(cases, data)
    text = table(rows)
    per_pair = pair_ratio_lines(rows)
    print()
    print(text)
    if per_pair:
        print()
        print(per_pair)
    if skips:
        print("\nskipped:")
        for key, reason in skips.items():
            print(f"  {key}: {reason}")
    for key, reason in left_out.items():
        print(f"\nleft out of this smoke run: {LABELS[key]} ({reason})")
    out = args.out or RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "argv": sys.argv[1:] if argv is None else argv,
                "pairs": args.pairs,
                "systems": systems,
                "environment": environment(args, client),
                "peer_packages": peer_versions(peers),
                "backends": backends.urls,
                "rows": rows,
                "samples": data,
                "skipped": skips,
                "left_out": left_out,
                "table": text,
                "pair_ratios": per_pair,
                "seconds": time.monotonic() - started,
            },
            indent=2,
        )
    )
    print(f"\nresults: {out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
