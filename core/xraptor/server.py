"""XRaptor: configuration, lifecycle and the HTTP endpoints of the server."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl as _ssl
from collections.abc import Coroutine, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Self

import orjson
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from . import static
from .admission import Admitted, admit
from .connection import Connection
from .context import default_app, set_default_factory
from .deflate import check_compression
from .endpoints import http_answer
from .logs import serve_defaults, ws_url
from .metrics import Metrics
from .middleware import MiddlewareChain
from .origins import OriginPolicy
from .plugins import get_plugins
from .protocol import PING_ROUTE, MethodType, Request, Response
from .reader import Reader
from .routing import Router
from .sampling import LogSampler
from .transport import Listener, ListenOptions

if TYPE_CHECKING:
    from .antenna import Antenna
    from .asgi import AsgiApp

logger = logging.getLogger("xraptor")

#: seconds between two INFO log lines about refused WebSocket upgrades
HANDSHAKE_LOG_INTERVAL = 5.0

#: seconds between two looks at the requests in flight while draining
_DRAIN_POLL = 0.02


class XRaptor(Reader):
    """A server: an app (routes, middlewares, guards, antenna, rooms, streams; see
    :mod:`xraptor.app`) served on a host and port.

    :param ip_address: interface to listen on
    :param port: TCP port (0 picks a free one; see :attr:`port` after start)
    :param antenna: antenna name, URL, class or instance (default: memory)
    :param antenna_options: options for an antenna given by name or class
    :param max_size: max inbound message size in bytes (``None`` disables)
    :param max_queue: max buffered inbound messages per connection
    :param ping_interval: keepalive ping interval in seconds (``None`` disables)
    :param ping_timeout: keepalive ping timeout in seconds
    :param health_path: HTTP path of the JSON health check (``None`` disables)
    :param metrics_path: HTTP path of the Prometheus metrics (``None`` disables)
    :param max_buffer: outgoing bytes buffered per connection before the
        slow-consumer policy closes it (code 1013)
    :param max_streams: open SUB streams allowed per connection; past it a SUB is
        refused with ``too_many_streams``
    :param reuse_port: bind with SO_REUSEPORT so several processes share the port
        (``xraptor run --workers N``)
    :param max_inflight: GET/POST/PUT requests of one connection served at once, each
        in its own task; past it the server stops reading that connection until one
        finishes (``1``: strictly one after the other, as in 0.4)
    :param max_id_length: longest ``request_id`` and ``route`` accepted (characters);
        longer ones are refused with ``invalid_field``
    :param drain_timeout: seconds a shutdown waits for requests in flight to finish
    :param close_timeout: seconds the closing handshake of each connection may take at
        shutdown before the connection is dropped
    :param transport: the listening transport, by name: ``"websockets"`` (built in) or
        one a plugin offers (``xraptor plugins`` lists them)
    :param ssl: an :class:`ssl.SSLContext` to serve ``wss://`` (``None``: plain ``ws://``)
    :param compression: permessage-deflate for clients that offer it (browsers do):
        ``"shared"`` (the default) compresses each room or stream message once for all
        members, without context takeover; ``"deflate"`` is websockets' own compression
        per connection, with context takeover (xraptor 0.5's behaviour); ``None``
        negotiates none. See the README's "Compression". Transports that cannot
        compress (picows) negotiate nothing; under ASGI the ASGI server decides.
    :param origins: the browser origins allowed to open a WebSocket: ``None`` (the
        default) for same-origin pages only, ``["https://app.example", ...]`` for
        exactly those, ``["*"]`` for every origin. Upgrades without an ``Origin``
        header (non-browser clients) are always allowed; others get HTTP 403.

    Connect guards (``@XRaptor.on_connect``, ``@app.on_connect``, ``use_guard``)
    run after the Origin check, before the upgrade.

    Every server also serves the browser client at ``/_xraptor/client.js``.
    """

    def __init__(
        self,
        ip_address: str = "127.0.0.1",
        port: int = 8765,
        *,
        antenna: object = None,
        antenna_options: dict[str, Any] | None = None,
        max_size: int | None = 2**20,
        max_queue: int | None = 32,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        health_path: str | None = "/health",
        metrics_path: str | None = "/metrics",
        max_buffer: int = 4 * 2**20,
        max_streams: int = 1000,
        reuse_port: bool = False,
        max_inflight: int = 64,
        max_id_length: int = 256,
        drain_timeout: float = 10.0,
        close_timeout: float = 2.0,
        origins: Iterable[str] | None = None,
        transport: str = "websockets",
        ssl: _ssl.SSLContext | None = None,
        compression: str | None = "shared",
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        if not isinstance(max_streams, int) or max_streams <= 0:
            raise ValueError(f"max_streams must be a positive int, got {max_streams!r}")
        if not isinstance(max_buffer, int) or max_buffer <= 0:
            raise ValueError(f"max_buffer must be a positive int, got {max_buffer!r}")
        for name, value in (("max_inflight", max_inflight), ("max_id_length", max_id_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, seconds in (("drain_timeout", drain_timeout), ("close_timeout", close_timeout)):
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds!r}")
        if not isinstance(transport, str) or not transport:
            raise TypeError(
                f"transport must be a transport's name such as 'websockets', got {transport!r}"
            )
        if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext, got {type(ssl).__name__}")
        #: the listening transport's name (see :mod:`xraptor.transport`)
        self.transport = transport
        #: the TLS context the server listens with (``None``: plain ``ws://``)
        self.ssl = ssl
        self.compression = compression
        self.host = ip_address
        self.reuse_port = reuse_port
        self.port = port
        self._health_path = health_path
        self._metrics_path = metrics_path
        self._max_buffer = max_buffer
        self._max_streams = max_streams
        self._max_inflight = max_inflight
        self._max_id_length = max_id_length
        self.drain_timeout = float(drain_timeout)
        self.close_timeout = float(close_timeout)
        self._draining = False
        self._connections: set[Connection] = set()
        self._origin_policy = OriginPolicy(origins)
        #: samples the log lines of refused upgrades (see :mod:`xraptor.sampling`)
        self._refusal_log = LogSampler(HANDSHAKE_LOG_INTERVAL)
        self._serve_options: dict[str, Any] = {
            "max_size": max_size,
            "max_queue": max_queue,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
        }
        super().__init__()
        self._router = Router()
        self._chain: MiddlewareChain | None = None
        self._listener: Listener | None = None
        self._closing: asyncio.Future[None] | None = None
        self._stop_event: asyncio.Event | None = None
        self._http_routes: dict[str, tuple[str, bytes]] = {}
        self._asgi: AsgiApp | None = None
        #: the ASGI application serving this app while it is started (see asgi_app())
        self._hosted: AsgiApp | None = None
        self.add_http_route(static.CLIENT_JS_PATH, static.CLIENT_JS_TYPE, static.read("xraptor.js"))
        if antenna is not None:
            self.set_antenna(antenna, **(antenna_options or {}))
        elif antenna_options:
            raise ValueError("antenna_options given without an antenna")

    # ----- configuration ------------------------------------------------------

    def set_origins(self, origins: Iterable[str] | None) -> Self:
        """Set the Origin policy (see the ``origins`` parameter); takes effect at once."""
        self._origin_policy = OriginPolicy(origins)
        #: samples the log lines of refused upgrades (see :mod:`xraptor.sampling`)
        self._refusal_log = LogSampler(HANDSHAKE_LOG_INTERVAL)
        return self

    def add_http_route(self, path: str, content_type: str, body: bytes) -> None:
        """Serve ``body`` to plain HTTP GETs of ``path`` on the WebSocket port.

        WebSocket upgrade requests to the same path still open a WebSocket.
        """
        if not path.startswith("/"):
            raise ValueError(f"an HTTP path must start with '/', got {path!r}")
        self._http_routes[path] = (content_type, bytes(body))

    def load_routes(self) -> Self:
        """Load the routes and middlewares registered so far (on the default app and on
        this one) into this server, with the built-in ``GET /_xraptor/ping``."""
        self._router.load(self.routes())
        self._router.table.setdefault(PING_ROUTE, {}).setdefault(MethodType.GET, _pong)
        self._chain = self.middleware_chain() or None
        return self

    @property
    def compression(self) -> str | None:
        """The compression policy: ``"shared"``, ``"deflate"`` or ``None`` (see the
        ``compression`` parameter); settable until :meth:`start`."""
        return self._compression

    @compression.setter
    def compression(self, value: str | None) -> None:
        self._compression = check_compression(value)

    @property
    def health_path(self) -> str | None:
        """The HTTP path of the health check (``None``: disabled)."""
        return self._health_path

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def started(self) -> bool:
        return self._listener is not None or self._hosted is not None

    # ----- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; returns once the port is bound (see :attr:`port`)."""
        if self._listener is not None:
            raise RuntimeError("the server is already running")
        if self._hosted is not None:
            raise RuntimeError("this app is already served by an ASGI server (asgi_app())")
        listen = get_plugins().transport(self.transport)  # unknown names fail before anything
        antenna = await self._start_app()
        options = ListenOptions(
            host=self.host,
            port=self.port,
            ssl=self.ssl,
            reuse_port=self.reuse_port,
            close_timeout=self.close_timeout,
            compression=self._compression,
            **self._serve_options,
        )
        try:
            self._listener = await listen(self, options)
        except BaseException:
            await antenna.close()
            raise
        self.port = self._listener.port
        await get_plugins().call_lifecycle("xraptor_startup", server=self)
        logger.info(  # once per start; serve() makes it visible without a logging set-up
            "xraptor listening on %s (antenna %s, transport %s)",
            ws_url(self.host, self.port, tls=self.ssl is not None),
            antenna.name,
            self.transport,
        )

    async def _start_app(self) -> Antenna:
        """Start what serving needs besides a listener (the native server and ASGI)."""
        self.load_routes()
        antenna = self._antenna = self.antenna  # pinned while it serves
        history = self.history_resolver()
        if history is not None:
            antenna.set_history(history)  # raises if the antenna cannot keep history
        self.presence_tracker.configure(self.presence_resolver(), antenna)  # may raise too
        default_app()._last_started = self
        self.metrics = Metrics()
        self._draining = False
        await antenna.start()
        return antenna

    def asgi_app(self) -> AsgiApp:
        """This app as an ASGI 3 application (the same one at every call).

        Serve it with uvicorn, hypercorn or granian (``uvicorn myapp:asgi``), or
        mount it in Starlette or FastAPI (``app.mount("/realtime", server.asgi_app())``).
        See :class:`xraptor.asgi.AsgiApp` and the README's "Use it with FastAPI /
        Starlette / uvicorn".
        """
        if self._asgi is None:
            from .asgi import AsgiApp

            self._asgi = AsgiApp(self)
        return self._asgi

    async def close(self) -> None:
        """Shut down gracefully: drain, close every connection with 1001, close the antenna.

        While draining, the server keeps listening but answers new WebSocket upgrades
        and ``/health`` with 503, and requests read meanwhile with ``shutting_down``;
        requests already in flight get up to :attr:`drain_timeout` seconds to finish.
        Then every connection is closed with code 1001 (going away), each closing
        handshake bounded by :attr:`close_timeout`.
        """
        if self._closing is None:
            if self._listener is None:
                return
            self._closing = asyncio.ensure_future(self._shut_down(self._listener))
        await asyncio.shield(self._closing)  # a second caller waits for the same shutdown

    async def _shut_down(self, listener: Listener) -> None:
        self._draining = True
        try:
            await self._drain()
            await listener.close_connections(self.close_timeout)
            await get_plugins().call_lifecycle("xraptor_shutdown", server=self)
        finally:
            self._listener = None
            await listener.wait_closed()
            await self.room_tasks.settle()
            await self.antenna.close()
            logger.info(
                "xraptor stopped listening on %s",
                ws_url(self.host, self.port, tls=self.ssl is not None),
            )
            self._closing = None

    async def _drain(self) -> None:
        """Wait up to ``drain_timeout`` for the requests in flight to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        # polled: a shutdown-only path, over every connection's tasks and inline requests
        while (busy := self._requests_in_flight()) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL)
        if busy:
            logger.warning(
                "%d requests still in flight after drain_timeout (%.1f s); cancelling them",
                busy,
                self.drain_timeout,
            )
            for connection in self._connections:
                connection.cancel_requests()

    def _requests_in_flight(self) -> int:
        return sum(len(c.tasks) + c.serving_inline for c in self._connections)

    async def serve(self) -> None:
        """Serve until :meth:`stop` is called or SIGTERM/SIGINT arrives, then shut down."""
        self._stop_event = asyncio.Event()
        serve_defaults()  # show the start-up line when nothing configured logging
        await self.start()
        self._install_signal_handlers()
        try:
            await self._stop_event.wait()
        finally:
            await self.close()

    def stop(self) -> None:
        """Ask :meth:`serve` to shut down gracefully."""
        if self._stop_event is not None:
            self._stop_event.set()

    def run(self) -> None:
        """Run :meth:`serve` on uvloop when installed, else on asyncio."""
        run_coroutine(self.serve())

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):
                logger.debug("could not install a handler for %s", sig)

    # ----- HTTP endpoints ---------------------------------------------------------

    def http_endpoint(self, path: str) -> HttpResponse | None:
        """The answer to a plain HTTP GET of ``path`` (``/health``, ``/metrics``, the
        browser client, :meth:`add_http_route` paths), ``None`` for other paths."""
        if self._health_path is not None and path == self._health_path:
            antenna = self.antenna.describe()
            body = self.metrics.health(antenna, draining=self._draining)
            status = HTTPStatus.OK if body["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            return http_answer(status, "application/json", orjson.dumps(body))
        if self._metrics_path is not None and path == self._metrics_path:
            text = self.metrics.prometheus(self.antenna.describe())
            return http_answer(
                HTTPStatus.OK, "text/plain; version=0.0.4; charset=utf-8", text.encode()
            )
        static = self._http_routes.get(path)
        if static is not None:
            return http_answer(HTTPStatus.OK, static[0], static[1])
        return None

    async def admit(self, request: HttpRequest, remote_ip: str) -> HttpResponse | Admitted:
        """Admit a WebSocket upgrade: the Origin policy, then the connect guards (each
        transport calls this with the handshake's path, query and headers)."""
        outcome = await admit(
            request, remote_ip, self._origin_policy, self.guards(), self._refusal_log
        )
        if not isinstance(outcome, Admitted):
            self.metrics.handshake_refusals_total += 1
        return outcome


def run_coroutine(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on uvloop when it is installed, else on asyncio."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _pong(request: Request) -> Response:
    """``GET /_xraptor/ping``: answers ``pong`` (a liveness check for clients)."""
    return Response(request.request_id, "pong", {}, MethodType.GET)


set_default_factory(XRaptor)
