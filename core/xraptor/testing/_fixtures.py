"""The fixtures of :mod:`xraptor.testing.pytest_plugin` (imported once pytest-asyncio
is known to be active)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from ..antennas import MemoryAntenna
from ..server import XRaptor
from .client import Connect, TestClient


@pytest_asyncio.fixture
async def xraptor_antenna() -> AsyncIterator[MemoryAntenna]:
    antenna = MemoryAntenna()
    try:
        yield antenna
    finally:
        await antenna.close()


@pytest.fixture
def xraptor_app(xraptor_antenna: MemoryAntenna) -> XRaptor:
    return XRaptor(antenna=xraptor_antenna)


@pytest_asyncio.fixture
async def xraptor_connect(xraptor_app: XRaptor) -> AsyncIterator[Connect]:
    clients: list[TestClient] = []

    async def connect(path: str = "/", **options: Any) -> TestClient:
        client = TestClient(xraptor_app, path, **options)
        await client.connect()
        clients.append(client)
        return client

    async with xraptor_app.asgi_app().lifespan():
        try:
            yield connect
        finally:
            for client in reversed(clients):
                await client.close()


@pytest_asyncio.fixture
async def xraptor_client(xraptor_connect: Connect) -> TestClient:
    return await xraptor_connect()
