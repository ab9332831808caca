"""A private local Redis Cluster for the tests: 3 masters and 3 replicas on loopback.

Each node is a ``redis-server --cluster-enabled yes`` with a short
``cluster-node-timeout`` (1 s), so a replica takes over a killed master within a
few seconds; ``redis-cli --cluster create`` joins them. The cluster bus of a node
listens on its port + 10000, so the ports are picked below 55536 with both free.
A test may kill, pause or restart nodes (their ``nodes.conf`` is kept, so a
restarted node rejoins with its identity). Everything started is killed at
teardown, also when the test failed.

Under ``CI=true`` a missing ``redis-server`` or ``redis-cli`` fails the tests
instead of skipping them, as the single-server fixtures do.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

REDIS_BINARY = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
IN_CI = os.environ.get("CI", "").lower() == "true"
NODE_TIMEOUT_MS = 1000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, avoid: list[int] | None = None) -> list[int]:
    """``count`` free loopback ports whose cluster bus port (+10000) is free too."""
    found: list[int] = []
    taken = set(avoid or ())
    while len(found) < count:
        # below the kernel's ephemeral range (32768 up, usually), bus port included, so
        # that no outgoing connection takes one between this check and the start
        port = random.randrange(12000, 22700)
        if {port, port + 10000, port - 10000} & (taken | set(found)):
            continue
        if _bindable(port) and _bindable(port + 10000):
            found.append(port)
    return found


class LocalCluster:
    """Six ``redis-server`` nodes in cluster mode (3 masters, 3 replicas) in ``folder``.

    :param tls: serve TLS only (``--tls-port``, ``--tls-cluster yes``) with the
        certificate pair ``tls``; clients then use ``rediss+cluster://``
    """

    def __init__(
        self, folder: Path, *, nodes: int = 6, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.folder = folder
        self.ports = cluster_ports(nodes)
        self.tls = tls
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    # ----- addresses -------------------------------------------------------------

    @property
    def url(self) -> str:
        """A cluster URL naming two of the nodes as seeds."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        seeds = ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])
        query = f"?ssl_ca_certs={self.tls[0]}" if self.tls else ""
        return f"{scheme}://{seeds}{query}"

    def client(self, port: int) -> redis.Redis:
        """A plain client to one node (for the test's own looks at the cluster)."""
        if self.tls:
            return redis.Redis(
                port=port, ssl=True, ssl_ca_certs=str(self.tls[0]), decode_responses=True,
                socket_timeout=2,
            )  # fmt: skip
        return redis.Redis(
            port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
        )

    # ----- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start every node, join them into a cluster and wait until it serves every slot."""
        for index, port in enumerate(self.ports):
            for attempt in range(3):
                try:
                    self.start_node(port)
                    break
                except RuntimeError:  # the port was taken meanwhile: another one
                    self.kill_node(port)
                    if attempt == 2:
                        raise
                    port = self.ports[index] = cluster_ports(1, avoid=self.ports)[0]
        assert REDIS_CLI is not None
        command = [REDIS_CLI]
        if self.tls:
            command += ["--tls", "--cacert", str(self.tls[0])]
        command += ["--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
        command += ["--cluster-replicas", "1", "--cluster-yes"]
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]!r}")
        self.wait_ok()

    def start_node(self, port: int) -> None:
        """Start (or restart) the node of ``port``, with its kept ``nodes.conf``."""
        assert REDIS_BINARY is not None
        folder = self.folder / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        command = [REDIS_BINARY, "--bind", "127.0.0.1", "--dir", str(folder)]
        if self.tls:
            cert, key = self.tls
            command += ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes",
                        "--tls-replication", "yes", "--tls-cert-file", str(cert),
                        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                        "--tls-auth-clients", "no"]  # fmt: skip
        else:
            command += ["--port", str(port)]
        command += [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # a replica may always take over (even one that synced long ago)
            "--cluster-replica-validity-factor", "0",
            # replicas sync at once, without writing the data set to disk
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self.processes[port] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client(port).ping():
                    return
            except redis.RedisError:
                pass
            if self.processes[port].poll() is not None:
                raise RuntimeError(f"redis-server on {port} exited")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not answer PING within 10 s")
            time.sleep(0.02)

    def kill_node(self, port: int) -> None:
        """kill -9 one node."""
        process = self.processes.pop(port, None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def pause_node(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGSTOP)

    def resume_node(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def kill_all(self) -> None:
        for port in list(self.processes):
            self.kill_node(port)

    def restart_all(self) -> None:
        """Start every node that is not running and wait until the cluster is whole."""
        for port in self.ports:
            if port not in self.processes:
                self.start_node(port)
        self.wait_ok()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused node cannot die otherwise
                process.kill()
        for process in self.processes.values():
            process.wait(5)
        self.processes.clear()

    # ----- state -----------------------------------------------------------------

    def running(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says the cluster is ok with every slot served,
        knows every node, and each master has a synced replica (so it can fail over)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._whole():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster on {self.ports} did not become ok in {timeout} s")
            time.sleep(0.05)

    def _whole(self) -> bool:
        running = self.running()
        try:
            for port in running:
                client = self.client(port)
                fields = client.cluster("INFO")  # redis-py parses it into a dict
                if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != "16384":
                    return False
                if int(fields.get("cluster_known_nodes", 0)) < len(self.ports):
                    return False
                replication = client.info("replication")
                if replication.get("role") == "slave" and (
                    replication.get("master_link_status") != "up"
                ):
                    return False
        except redis.RedisError:
            return False
        return True

    def masters(self) -> dict[int, tuple[int, int]]:
        """Each master's port and the slot ranges it serves (first range)."""
        found: dict[int, tuple[int, int]] = {}
        for start, end, master, *_ in self._slots():
            found.setdefault(int(master[1]), (int(start), int(end)))
        return found

    def master_of(self, channel: str, *, ask_not: int | None = None) -> int:
        """The port of the master serving ``channel``'s slot (as a live node sees it;
        not ``ask_not``, e.g. a paused node)."""
        slot = key_slot(channel.encode())
        for start, end, master, *_ in self._slots(ask_not):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def replicas_of(self, port: int) -> list[int]:
        for _, _, master, *replicas in self._slots():
            if int(master[1]) == port:
                return [int(replica[1]) for replica in replicas]
        return []

    def _slots(self, ask_not: int | None = None) -> list[list[object]]:
        for port in self.running():
            if port == ask_not:
                continue
            try:
                slots = self.client(port).execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            # redis-py may parse it into a dict {(start, end): {...}}; ask for the raw form
            if isinstance(slots, dict):
                return [
                    [start, end, [*info["primary"], ""],
                     *([*replica, ""] for replica in info["replicas"])]
                    for (start, end), info in slots.items()
                ]  # fmt: skip
            return list(slots)
        raise RuntimeError("no node of the cluster answers")

    # ----- slot migration by hand -------------------------------------------------

    def node_id(self, port: int) -> str:
        return str(self.client(port).cluster("MYID"))

    def begin_migration(self, slot: int, target: int) -> int:
        """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on its master (the first
        half of what ``redis-cli --cluster reshard`` does); return that master's port."""
        source = self.owner_of_slot(slot)
        self.client(target).cluster("SETSLOT", slot, "IMPORTING", self.node_id(source))
        self.client(source).cluster("SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def move_keys(self, slot: int, source: int, target: int) -> list[str]:
        """MIGRATE every key of ``slot`` from ``source`` to ``target``; the keys moved."""
        node = self.client(source)
        keys: list[str] = node.cluster("GETKEYSINSLOT", slot, 1000)
        if keys:
            node.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        return keys

    def end_migration(self, slot: int, target: int) -> None:
        """Give ``slot`` to ``target`` on every master (the importing node first)."""
        target_id = self.node_id(target)
        self.client(target).cluster("SETSLOT", slot, "NODE", target_id)
        for port in self.masters():
            if port != target:
                self.client(port).cluster("SETSLOT", slot, "NODE", target_id)

    def owner_of_slot(self, slot: int) -> int:
        for start, end, master, *_ in self._slots():
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def client_list(self) -> list[dict[str, str]]:
        """``CLIENT LIST`` of every running node, concatenated, each with its ``node`` port."""
        clients: list[dict[str, str]] = []
        for port in self.running():
            for entry in self.client(port).client_list():
                clients.append({**{k: str(v) for k, v in entry.items()}, "node": str(port)})
        return clients


def no_cluster(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing Redis Cluster backend fails the run)")
    pytest.skip(reason)


def make_cluster(folder: Path, *, tls: tuple[Path, Path] | None = None) -> Iterator[LocalCluster]:
    """Start a cluster in ``folder``, yield it, kill every node it started."""
    if REDIS_BINARY is None or REDIS_CLI is None:
        no_cluster("a local Redis Cluster needs redis-server and redis-cli on PATH")
    cluster = LocalCluster(folder, tls=tls)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster shared by the tests of one module; a test that stops nodes restarts them."""
    yield from make_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster for one test alone (failover tests: they change which node is master)."""
    yield from make_cluster(tmp_path)
