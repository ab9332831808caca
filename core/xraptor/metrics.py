"""Process counters, ``/health`` and the Prometheus text exposition of ``/metrics``.

Counters are plain integer attributes incremented on the event loop: the hot
path pays one attribute increment, which is why this does not go through
prometheus-client (whose counters take a lock per increment).
"""

from __future__ import annotations

import time
from typing import Any

_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("connections_total", "counter", "Connections accepted"),
    ("connections_active", "gauge", "Open connections"),
    ("requests_total", "counter", "Requests received"),
    ("request_errors_total", "counter", "Requests answered with an error response"),
    ("pushes_total", "counter", "Push frames written to clients"),
    ("streams_active", "gauge", "Open SUB streams"),
    ("slow_consumer_disconnects_total", "counter", "Connections closed as slow consumers"),
    ("gap_notices_total", "counter", "Backend gaps reported to streams"),
    (
        "recoveries_total",
        "counter",
        "Rooms recovered from history (a SUB with since, or a room after an outage)",
    ),
    (
        "unrecovered_total",
        "counter",
        "Unrecovered notices: a room's history no longer reached back to a SUB's since "
        "or to the room's last message before an outage",
    ),
    (
        "handshake_refusals_total",
        "counter",
        "WebSocket upgrades refused before the upgrade (Origin policy, connect guards)",
    ),
    (
        "refusal_logs_suppressed_total",
        "counter",
        "Refused requests logged at DEBUG only (past the per-connection INFO sample rate)",
    ),
)


class Metrics:
    """In-process counters of one server."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_active = 0
        self.requests_total = 0
        self.request_errors_total = 0
        self.pushes_total = 0
        self.streams_active = 0
        self.slow_consumer_disconnects_total = 0
        self.gap_notices_total = 0
        self.recoveries_total = 0
        self.unrecovered_total = 0
        self.refusal_logs_suppressed_total = 0
        self.handshake_refusals_total = 0
        self._start = time.monotonic()

    def uptime_seconds(self) -> float:
        return time.monotonic() - self._start

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name, _, _ in _COUNTERS}

    def health(
        self, antenna: dict[str, Any] | None = None, *, draining: bool = False
    ) -> dict[str, Any]:
        up = antenna is None or _is_up(antenna)
        body: dict[str, Any] = {
            "status": "draining" if draining else "ok" if up else "degraded",
            "uptime_seconds": round(self.uptime_seconds(), 1),
            "active_connections": self.connections_active,
        }
        if antenna is not None:
            body["antenna"] = antenna
        return body

    def prometheus(self, antenna: dict[str, Any] | None = None) -> str:
        lines: list[str] = []
        for name, kind, help_text in _COUNTERS:
            metric = f"xraptor_{name}"
            lines.append(f"# HELP {metric} {help_text}.")
            lines.append(f"# TYPE {metric} {kind}")
            lines.append(f"{metric} {getattr(self, name)}")
        lines.append("# HELP xraptor_uptime_seconds Seconds since the server started.")
        lines.append("# TYPE xraptor_uptime_seconds gauge")
        lines.append(f"xraptor_uptime_seconds {round(self.uptime_seconds(), 1)}")
        if antenna is not None:
            lines.append("# HELP xraptor_antenna_up 1 when the pub/sub backend is reachable.")
            lines.append("# TYPE xraptor_antenna_up gauge")
            up = 1 if _is_up(antenna) else 0
            lines.append(f'xraptor_antenna_up{{antenna="{antenna.get("name", "")}"}} {up}')
            round_trip = antenna.get("round_trip_ms")
            if isinstance(round_trip, int | float):
                lines.append(
                    "# HELP xraptor_antenna_round_trip_seconds Last answered health probe's "
                    "round trip to the backend."
                )
                lines.append("# TYPE xraptor_antenna_round_trip_seconds gauge")
                lines.append(
                    f'xraptor_antenna_round_trip_seconds{{antenna="{antenna.get("name", "")}"}} '
                    f"{round_trip / 1e3:.6f}"
                )
            reconnects = antenna.get("reconnects")
            if isinstance(reconnects, int):
                lines.append(
                    "# HELP xraptor_antenna_reconnects_total Backend reconnections after an outage."
                )
                lines.append("# TYPE xraptor_antenna_reconnects_total counter")
                lines.append(
                    f'xraptor_antenna_reconnects_total{{antenna="{antenna.get("name", "")}"}} '
                    f"{reconnects}"
                )
        return "\n".join(lines) + "\n"


def _is_up(antenna: dict[str, Any]) -> bool:
    """An antenna not started yet connects on first use: only ``down``/``closed`` are down."""
    return antenna.get("state") in ("up", "new")
