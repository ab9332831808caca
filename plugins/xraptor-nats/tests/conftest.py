"""Fixtures: private nats-servers (see nats_support.py for the policy)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats_support import NatsServer, free_port, jetstream_server, nats_binary, shared_url_or_skip


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    binary = nats_binary()
    if binary is None:
        yield NatsServer(shared_url_or_skip(), None)
        return
    server = NatsServer(f"nats://127.0.0.1:{free_port()}", binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def private_nats() -> Iterator[NatsServer]:
    """A nats-server of the test's own, for killing and restarting."""
    binary = nats_binary()
    if binary is None:
        if os.environ.get("CI") == "true" and not os.environ.get("XRAPTOR_NATS_URL"):
            pytest.fail("CI=true: no nats-server on PATH and XRAPTOR_NATS_URL is not set")
        pytest.skip("fault injection needs the nats-server binary (to kill and restart it)")
    server = NatsServer(f"nats://127.0.0.1:{free_port()}", binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _own_subjects() -> Iterator[None]:
    """Antennas of each test use subjects of their own (XRAPTOR_NATS_URL may be shared)."""
    from xraptor_nats.antenna import NatsAntenna

    NatsAntenna.set_config({"subject_prefix": f"xrtest.{uuid.uuid4().hex}"})
    yield
    NatsAntenna.set_config({})


@pytest.fixture
def private_jetstream(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server -js of the test's own (with its store directory), to kill and restart."""
    server = jetstream_server(tmp_path / "store")
    if server is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: no nats-server on PATH")
        pytest.skip("fault injection needs the nats-server binary (to kill and restart it)")
    server.start()
    try:
        yield server
    finally:
        server.stop()
