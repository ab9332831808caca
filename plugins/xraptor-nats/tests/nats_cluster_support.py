"""Test support: a local NATS cluster (full mesh of routes) on free loopback ports.

Each member is a :class:`~nats_support.NatsServer` with a client port, a route port
and a monitoring port; the cluster counts as formed once every member's ``/routez``
lists a route to each other member. Members may be killed and started again on the
same ports, as the single-server tests do.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field

from nats_support import NatsServer, free_port


@dataclass
class Member:
    """One member of the cluster: its server and its ports."""

    server: NatsServer
    route_port: int
    monitor_port: int

    @property
    def url(self) -> str:
        return self.server.url

    def monitor(self, endpoint: str) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.monitor_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            data: dict[str, object] = json.load(answer)
        return data

    def routes(self) -> int:
        try:
            count = self.monitor("routez").get("num_routes", 0)
        except OSError:
            return 0
        return int(count) if isinstance(count, int) else 0

    def connection_names(self) -> list[str]:
        listing = self.monitor("connz?limit=100000").get("connections", [])
        assert isinstance(listing, list)
        return [str(c.get("name", "")) for c in listing if isinstance(c, dict)]


@dataclass
class NatsCluster:
    """``size`` nats-servers joined by routes into one cluster named ``name``."""

    binary: str
    size: int = 3
    name: str = "xrtest"
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        route_ports = [free_port() for _ in range(self.size)]
        for index, route_port in enumerate(route_ports):
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports if p != route_port)
            monitor_port = free_port()
            args = (
                "--cluster_name", self.name,
                "--cluster", f"nats://127.0.0.1:{route_port}",
                "--routes", routes,
                "-m", str(monitor_port),
                "-n", f"{self.name}-{index}",
            )  # fmt: skip
            server = NatsServer(f"nats://127.0.0.1:{free_port()}", self.binary, args)
            self.members.append(Member(server, route_port, monitor_port))

    @property
    def urls(self) -> list[str]:
        return [member.url for member in self.members]

    def start(self) -> None:
        for member in self.members:
            member.server.start()
        self.wait_formed()

    def wait_formed(self, timeout: float = 15.0) -> None:
        """Return once every running member has a route to every other running one."""
        deadline = time.monotonic() + timeout
        while True:
            running = [m for m in self.members if m.server.running]
            if all(m.routes() >= len(running) - 1 for m in running):
                return
            if time.monotonic() > deadline:
                counts = {m.url: m.routes() for m in running}
                raise AssertionError(f"the NATS cluster did not form: routes {counts}")
            time.sleep(0.05)

    def stop(self) -> None:
        for member in self.members:
            member.server.stop()
