"""A private PostgreSQL cluster for the tests, which they may stop and start.

The server binaries come from ``XRAPTOR_POSTGRES_BINDIR``, else from ``PATH`` (``initdb``),
else from the newest ``/usr/lib/postgresql/*/bin`` (where Debian keeps them, off
``PATH``). ``initdb`` refuses to run as root: as root, the cluster belongs to the
``postgres`` user (its folder is made under the system's temporary folder, which that
user can reach, and the server processes run as that user).

Without the binaries the tests use ``XRAPTOR_POSTGRES_URL`` (the fault and TLS tests
skip then); with neither, they skip with the reason, except under ``CI=true``, where a
missing PostgreSQL fails the run.

The cluster listens on a free loopback port with SSL on (a throw-away self-signed
certificate): the role ``postgres`` may connect with or without TLS, the role
``tlsonly`` only with it (``pg_hba.conf``). Written with the standard library: the
fault tests need an immediate shutdown and a restart on the same port, and readiness
means ``pg_isready`` answering.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from xraptor.testing import free_port, self_signed_cert

IN_CI = os.environ.get("CI", "").lower() == "true"
EXTERNAL_URL = os.environ.get("XRAPTOR_POSTGRES_URL")

_HBA = """\
local all all trust
hostssl all tlsonly 127.0.0.1/32 trust
host all tlsonly 127.0.0.1/32 reject
host all all 127.0.0.1/32 trust
"""


def bindir() -> Path | None:
    """The folder of the PostgreSQL server binaries (``initdb``, ``postgres``), if any."""
    configured = os.environ.get("XRAPTOR_POSTGRES_BINDIR")
    if configured:
        return Path(configured)
    initdb = shutil.which("initdb")
    if initdb is not None:  # a link on PATH to the versioned folder, perhaps
        return Path(initdb).resolve().parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: (
            int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def missing(reason: str) -> None:
    """Skip, or fail under CI=true: a missing PostgreSQL fails the run there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing PostgreSQL fails the run)")
    pytest.skip(reason)


class PostgresCluster:
    """A cluster of the test run's own: ``start``, ``stop`` (immediate), ``remove``."""

    def __init__(self, binaries: Path) -> None:
        self.bin = binaries
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # as root the server runs as "postgres": its folder cannot be under pytest's
        # private (0700) temporary folder
        self.folder = Path(tempfile.mkdtemp(prefix="xraptor-pg-"))
        self.data = self.folder / "data"
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "initdb refuses to run as root and there is no 'postgres' user to run "
                    "it as: create one (the Debian package does) or run the tests as another user"
                ) from None
            self._user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.cert, key = self_signed_cert(self.folder)
        self.key = self.folder / "server.key"
        key.rename(self.key)
        os.chmod(self.key, 0o600)
        os.chmod(self.cert, 0o644)
        if self._user:
            for path in (self.cert, self.key):
                os.chown(path, self._user["user"], self._user["group"])
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        (self.data / "pg_hba.conf").write_text(_HBA)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / program), *args], check=True, capture_output=True, **self._user
        )

    def url(self, user: str = "postgres", query: str = "sslmode=disable") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/postgres?{query}"

    @property
    def tls_url(self) -> str:
        """A URL of the TLS-only role that checks the server's certificate."""
        return self.url("tlsonly", f"sslmode=verify-full&sslrootcert={self.cert}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.folder), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300", "-c", "ssl=on",
             "-c", f"ssl_cert_file={self.cert}", "-c", f"ssl_key_file={self.key}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._user,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not accept connections within 30 s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        ready = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        )
        return ready.returncode == 0

    def stop(self) -> None:
        """An immediate shutdown (SIGQUIT): every connection drops at once."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def psql(self, sql: str) -> str:
        """Run ``sql`` as ``postgres`` through the cluster's socket; its output."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-At", "-h", str(self.folder), "-p", str(self.port),
             "-U", "postgres", "-d", "postgres", "-c", sql],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
