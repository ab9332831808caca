"""A small third-party plugin: an antenna named "fake", a middleware named "fake-ping"
and a connect guard named "fake-allow-list"."""

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
def xraptor_register_guards(registry: Any) -> None:
    def factory(tokens: dict[str, str]) -> Any:
        async def allow_list(handshake: xraptor.Handshake) -> str:
            user = tokens.get(handshake.token or "")
            if user is None:
                raise xraptor.Refuse(401, "fake-allow-list: unknown token")
            return user

        return allow_list

    registry.add("fake-allow-list", factory)


@xraptor.hookimpl
def xraptor_startup(server: xraptor.XRaptor) -> Any:
    async def note() -> None:
        started.append(server.antenna.name)

    return note()
