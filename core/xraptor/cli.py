"""The ``xraptor`` command: ``run``, ``demo`` and ``plugins``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from .plugins import get_plugins

if TYPE_CHECKING:
    from .server import XRaptor

logger = logging.getLogger("xraptor.cli")

#: seconds the parent of ``--workers N`` waits for its workers to stop after SIGTERM,
#: beyond the app's ``drain_timeout + close_timeout``
WORKER_GRACE = 10.0

#: seconds between a worker's checks that its supervisor is still alive
PARENT_CHECK = 1.0

#: exit code of a usage error (argparse's too)
USAGE = 2

ENV = {
    "host": "XRAPTOR_HOST",
    "port": "XRAPTOR_PORT",
    "antenna": "XRAPTOR_ANTENNA",
    "workers": "XRAPTOR_WORKERS",
    "log_level": "XRAPTOR_LOG_LEVEL",
    "origin": "XRAPTOR_ORIGINS",
}


class UsageError(Exception):
    """A wrong target or option: printed, exit code 2."""


def _plugins(_: argparse.Namespace) -> int:
    plugins = get_plugins()
    for info in plugins.info.values():
        line = f"{info.name}: {info.distribution} {info.version}".rstrip()
        print(line)
        if info.error:
            print(f"  failed to load: {info.error}")
            continue
        print(f"  antennas: {', '.join(info.antennas) or '-'}")
        print(f"  middlewares: {', '.join(info.middlewares) or '-'}")
        print(f"  guards: {', '.join(info.guards) or '-'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import make_server

    server = make_server(args.host, args.port)
    print(
        f"xraptor demo chat: open http://{args.host}:{args.port}/ in a browser "
        f"(WebSocket ws://{args.host}:{args.port}, memory antenna); Ctrl-C stops",
        flush=True,
    )
    server.run()
    return 0


# ----- xraptor run ------------------------------------------------------------------------


def load_app(target: str) -> XRaptor:
    """Import ``MODULE:ATTR`` (the current directory first on the path) and return the app."""
    from .server import XRaptor

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (for example 'myapp:app'), got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise UsageError(f"cannot import module {module_name!r}: {error}") from error
        raise
    app: object = module
    for part in attr.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(app, XRaptor):
        raise UsageError(f"{target} is a {type(app).__name__}, not an xraptor.XRaptor")
    return app


def _setting(args: argparse.Namespace, name: str) -> str | None:
    """A flag, else its environment variable, else None (flags win)."""
    value: object = getattr(args, name, None)
    if value is not None:
        return str(value)
    return os.environ.get(ENV[name]) or None


def _int_setting(args: argparse.Namespace, name: str) -> int | None:
    value = _setting(args, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {value!r} (from {ENV[name]})") from None


def _origins(args: argparse.Namespace) -> list[str] | None:
    """``--origin`` (repeatable), else ``XRAPTOR_ORIGINS`` (comma-separated), else None."""
    origins: list[str] | None = getattr(args, "origin", None)
    if origins is None:
        value = os.environ.get(ENV["origin"])
        if not value:
            return None
        origins = [item.strip() for item in value.split(",") if item.strip()]
    return origins


def _configure(args: argparse.Namespace) -> tuple[XRaptor, int]:
    """Load the app, apply host, port, antenna and origins; return it and the worker count."""
    app = load_app(args.target)
    host = _setting(args, "host")
    if host is not None:
        app.host = host
    port = _int_setting(args, "port")
    if port is not None:
        if not 0 <= port <= 65535:
            raise UsageError(f"port must be from 0 to 65535, got {port}")
        app.port = port
    antenna = _setting(args, "antenna")
    if antenna is not None:
        app.set_antenna(antenna)
    origins = _origins(args)
    if origins is not None:
        source = "--origin" if getattr(args, "origin", None) else ENV["origin"]
        try:
            app.set_origins(origins)
        except (TypeError, ValueError) as error:
            raise UsageError(f"{source}: {error}") from None
    workers = _int_setting(args, "workers")
    workers = 1 if workers is None else workers
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    if workers > 1:
        if app.antenna.name == "memory":
            raise UsageError(
                f"--workers {workers} needs an antenna that spans processes (for example "
                "--antenna redis://127.0.0.1:6379/0 or nats://127.0.0.1:4222): with the "
                "memory antenna each worker would see only its own rooms and streams"
            )
        if app.port == 0:
            raise UsageError("--workers needs a fixed --port (port 0 would differ per worker)")
    return app, workers


def _run(args: argparse.Namespace) -> int:
    try:
        app, workers = _configure(args)
    except UsageError as error:
        print(f"xraptor run: error: {error}", file=sys.stderr)
        return USAGE
    if args.supervisor is not None:
        app.reuse_port = True
        from .server import run_coroutine

        run_coroutine(_serve_worker(app, args.supervisor))
        return 0
    if workers == 1:
        app.run()
        return 0
    return _supervise(args, app, workers)


async def _serve_worker(app: XRaptor, parent: int) -> None:
    """Serve until SIGTERM, or until the supervisor is gone (killed with SIGKILL)."""

    async def watch_parent() -> None:
        while os.getppid() == parent:  # noqa: ASYNC110  (no event tells of a parent's death)
            await asyncio.sleep(PARENT_CHECK)
        logger.warning("the supervisor (pid %d) is gone; stopping this worker", parent)
        app.stop()

    watcher = asyncio.get_running_loop().create_task(watch_parent())
    try:
        await app.serve()
    finally:
        watcher.cancel()


def _worker_command(args: argparse.Namespace, app: XRaptor) -> list[str]:
    command = [sys.executable, "-m", "xraptor.cli", "--log-level", args.log_level]
    command += ["run", args.target, "--supervisor", str(os.getpid()), "--workers", "1"]
    command += ["--host", app.host, "--port", str(app.port)]
    antenna = _setting(args, "antenna")
    if antenna is not None:
        command += ["--antenna", antenna]
    for origin in _origins(args) or []:
        command += ["--origin", origin]
    return command


def _supervise(args: argparse.Namespace, app: XRaptor, workers: int) -> int:
    """Start the workers, forward SIGTERM/SIGINT to them, wait for them all.

    A worker that exits on its own stops the others: restarting is left to the
    process manager (systemd, Kubernetes, ...), which sees the exit code.
    """
    command = _worker_command(args, app)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            logger.info("received %s: stopping %d workers", signal.Signals(signum).name, workers)
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(workers):
            processes.append(subprocess.Popen(command))
        logger.info(
            "xraptor: %d workers on %s:%d (pids %s)",
            workers,
            app.host,
            app.port,
            " ".join(str(p.pid) for p in processes),
        )
        failed: int | None = None
        while not stopping:
            for process in processes:
                code = process.poll()
                if code is not None:
                    logger.error("worker %d exited with code %d; stopping", process.pid, code)
                    failed = code or 1
                    stopping = True
                    break
            else:
                time.sleep(0.1)
        code = _stop_workers(processes, worker_grace(app))
        return code if failed is None else failed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_grace(app: XRaptor) -> float:
    """Seconds a worker gets to stop after SIGTERM: its drain, its closes, and a margin."""
    return app.drain_timeout + app.close_timeout + WORKER_GRACE


def _stop_workers(processes: Sequence[subprocess.Popen[bytes]], grace: float) -> int:
    """SIGTERM every live worker (they drain), wait, then kill the stragglers."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    code = 0
    for process in processes:
        try:
            result = process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("worker %d did not stop in %.0f s; killing it", process.pid, grace)
            process.kill()
            result = process.wait()
        if result not in (0, -signal.SIGTERM):
            code = 1
    return code


# ----- the parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xraptor", description="xraptor: fast as a websocket, easy as HTTP"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get(ENV["log_level"]) or "INFO",
        help=f"logging level (default INFO; env {ENV['log_level']})",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="serve an application: xraptor run MODULE:ATTR",
        description="Serve the XRaptor instance ATTR of MODULE (importing it registers "
        "its routes). Each option also reads an environment variable; flags win.",
    )
    run.add_argument("target", metavar="MODULE:ATTR", help="for example myapp:app")
    run.add_argument("--host", help=f"interface to listen on (env {ENV['host']})")
    run.add_argument("--port", help=f"TCP port (env {ENV['port']})")
    run.add_argument(
        "--antenna",
        help=f"antenna name or URL, e.g. redis://127.0.0.1:6379/0 (env {ENV['antenna']})",
    )
    run.add_argument(
        "--origin",
        action="append",
        metavar="URL",
        help="a browser origin allowed to connect, e.g. https://app.example; repeat for "
        "more, '*' for any (default: same-origin pages only; env "
        f"{ENV['origin']}, comma-separated)",
    )
    run.add_argument(
        "--workers",
        help=f"processes sharing the port with SO_REUSEPORT (env {ENV['workers']}; default 1)",
    )
    run.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help=f"logging level (default INFO; env {ENV['log_level']})",
    )
    # set by the supervisor of --workers N on each worker it starts
    run.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    demo = sub.add_parser(
        "demo", help="serve the chat example and its web page on the memory antenna"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8765)
    demo.set_defaults(func=_demo)

    plugins = sub.add_parser(
        "plugins", help="list the plugins found, with their antennas and middlewares"
    )
    plugins.set_defaults(func=_plugins)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = str(args.log_level).upper()
    if not isinstance(logging.getLevelName(level), int):
        parser.error(f"unknown log level {args.log_level!r}")
    args.log_level = level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
