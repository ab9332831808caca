"""The ``nats-forward`` middleware: answer requests through NATS request/reply.

Enabled by the application, for the routes it chooses::

    server.use_middleware("nats-forward", priority=10, pattern=r"^/svc/",
                          servers="nats://127.0.0.1:4222", timeout=5.0)

Each matching request is sent, as its JSON text (``request_id``, ``payload``,
``header``, ``route``, ``method``), to the subject
``<subject_prefix>.<channel_token(route)>``; the reply's data (UTF-8) becomes the
response payload and its NATS headers, if any, the response header. See the
README for the subject scheme.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
from nats.aio.client import Client

from xraptor.protocol import Response

from .config import DEFAULT_SERVERS, PENDING_SIZE, split_servers
from .subjects import channel_token, check_prefix

if TYPE_CHECKING:
    from xraptor.protocol import Request

logger = logging.getLogger("xraptor_nats.forward")

NO_RESPONDERS = "no_responders"
UPSTREAM_TIMEOUT = "upstream_timeout"
BACKEND_UNAVAILABLE = "backend_unavailable"
INVALID_RESPONSE = "invalid_response"

_live: weakref.WeakSet[NatsForward] = weakref.WeakSet()


def route_subject(route: str, subject_prefix: str = "xraptor.rpc") -> str:
    """The NATS subject that requests for ``route`` are sent to."""
    return f"{subject_prefix}.{channel_token(route)}"


class NatsForward:
    """The middleware callable: ``await forward(request, connection)`` -> Response.

    It holds one NATS connection, opened on the first request and kept (with
    endless reconnection) until :meth:`close`; a closed forwarder reconnects on
    its next request.
    """

    def __init__(
        self,
        *,
        servers: str | list[str] = DEFAULT_SERVERS,
        subject_prefix: str = "xraptor.rpc",
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.servers = split_servers(servers)
        self.subject_prefix = check_prefix(subject_prefix)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self._connect_options = dict(connect_options or {})
        self._nc: Client | None = None
        self._lock: asyncio.Lock | None = None
        self._failed_at = -1e9
        self.__name__ = "nats-forward"
        _live.add(self)

    def subject(self, route: str) -> str:
        return route_subject(route, self.subject_prefix)

    async def _client(self) -> Client:
        nc = self._nc
        if nc is not None and not nc.is_closed:
            return nc
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            nc = self._nc
            if nc is None or nc.is_closed:
                if time.monotonic() - self._failed_at < 1.0:
                    # NATS was just found unreachable: answer at once, retry soon
                    raise nats.errors.NoServersError
                options: dict[str, Any] = {
                    "name": "xraptor-forward",
                    "max_reconnect_attempts": 1,
                    "reconnect_time_wait": 0.5,
                    "connect_timeout": self.connect_timeout,
                    **self._connect_options,
                    "pending_size": PENDING_SIZE,
                }
                options.update(servers=self.servers, error_cb=_log_error)
                try:
                    nc = self._nc = await nats.connect(**options)
                except BaseException:
                    self._failed_at = time.monotonic()
                    raise
                nc.options["max_reconnect_attempts"] = -1  # after the first connection
            return nc

    async def __call__(self, request: Request, connection: object) -> Response:
        try:
            nc = await self._client()
            if not nc.is_connected:
                raise nats.errors.ConnectionReconnectingError
            body = request.json().encode()
            if nc.pending_data_size + len(body) + 512 > PENDING_SIZE:
                # nats-py would wait without bound for a server that stopped reading
                raise nats.errors.OutboundBufferLimitError
            reply = await nc.request(self.subject(request.route), body, timeout=self.timeout)
        except nats.errors.NoRespondersError:
            return _error(
                request, NO_RESPONDERS, f"no service answers route {request.route[:100]!r}"
            )
        except nats.errors.TimeoutError:
            return _error(
                request,
                UPSTREAM_TIMEOUT,
                f"the service for route {request.route[:100]!r} did not answer "
                f"within {self.timeout} s",
            )
        except (nats.errors.Error, OSError, TimeoutError) as error:
            return _error(
                request, BACKEND_UNAVAILABLE, f"NATS is unreachable ({type(error).__name__})"
            )
        try:
            payload = reply.data.decode("utf-8")
        except UnicodeDecodeError:
            return _error(request, INVALID_RESPONSE, "the service's reply is not UTF-8 text")
        header: dict[str, Any] = dict(reply.headers) if reply.headers else {}
        return Response.create(
            request_id=request.request_id, header=header, payload=payload, method=request.method
        )

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()


def nats_forward(**options: Any) -> NatsForward:
    """The factory registered as ``nats-forward``; see :class:`NatsForward`."""
    return NatsForward(**options)


async def close_all() -> None:
    """Close the NATS connections of every forwarder of this process."""
    for forward in list(_live):
        await forward.close()


def _error(request: Request, code: str, message: str) -> Response:
    return Response.create(
        request_id=request.request_id,
        header={"error": code},
        payload=json.dumps({"code": code, "message": message}),
        method=request.method,
    )


async def _log_error(error: Exception) -> None:
    logger.warning("nats-forward: %s: %s", type(error).__name__, error)
