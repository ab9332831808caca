"""The built-in in-memory antenna: one process, no backend, registered like any plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..antenna import Antenna
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..plugins import AntennaRegistry


class MemoryAntenna(Antenna):
    """Pub/sub inside one process.

    Every ``MemoryAntenna`` of the process shares one bus, so two instances behave
    like two processes sharing a backend. Delivery is synchronous: ``post`` hands
    the message to every listener before it returns.
    """

    name: ClassVar[str] = "memory"
    #: channel -> antennas watching it, shared by every instance in the process
    _bus: ClassVar[dict[str, list[MemoryAntenna]]] = {}

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        return {}

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        for channel in list(self._bus):
            self._leave(channel)

    async def publish(self, channel: str, message: str) -> None:
        watchers = self._bus.get(channel)
        if not watchers:
            return
        if len(watchers) == 1:
            watchers[0].deliver(channel, message)
            return
        for antenna in tuple(watchers):
            antenna.deliver(channel, message)

    async def watch(self, channel: str) -> None:
        watchers = self._bus.setdefault(channel, [])
        if self not in watchers:
            watchers.append(self)

    async def unwatch(self, channel: str) -> None:
        self._leave(channel)

    async def is_alive(self, channel: str) -> bool:
        return bool(self._bus.get(channel))

    def _leave(self, channel: str) -> None:
        watchers = self._bus.get(channel)
        if watchers is None:
            return
        if self in watchers:
            watchers.remove(self)
        if not watchers:
            del self._bus[channel]


@hookimpl
def xraptor_register_antennas(registry: AntennaRegistry) -> None:
    registry.add(MemoryAntenna)
