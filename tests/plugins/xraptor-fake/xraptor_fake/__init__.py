"""A small third-party plugin: an antenna named "fake" and a middleware named "fake-ping"."""

from __future__ import annotations

from typing import Any

import xraptor

started: list[str] = []


@xraptor.hookimpl
def xraptor_register_antennas(registry: Any) -> None:
    from xraptor.antennas import MemoryAntenna

    class FakeAntenna(MemoryAntenna):
        name = "fake"

    registry.add(FakeAntenna)


@xraptor.hookimpl
def xraptor_register_middlewares(registry: Any) -> None:
    def factory(answer: str = "pong") -> Any:
        async def ping(request: xraptor.Request, connection: Any) -> xraptor.Response | None:
            if request.route != "/fake-ping":
                return None
            return xraptor.Response.create(
                request.request_id, {"started": ",".join(started)}, answer
            )

        return ping

    registry.add("fake-ping", factory)


@xraptor.hookimpl
def xraptor_startup(server: xraptor.XRaptor) -> Any:
    async def note() -> None:
        started.append(server.antenna.name)

    return note()
