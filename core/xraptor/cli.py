"""The ``xraptor`` command: ``run``, ``demo``, ``plugins`` and ``new-plugin``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import logs
from ._version import __version__
from .plugins import get_plugins
from .workers import serve_worker, supervise, worker_grace

__all__ = ["build_parser", "load_app", "main", "reload_command", "worker_grace"]

if TYPE_CHECKING:
    from .server import XRaptor

logger = logging.getLogger("xraptor.cli")

#: exit code of a usage error (argparse's too)
USAGE = 2

ENV = {
    "host": "XRAPTOR_HOST",
    "port": "XRAPTOR_PORT",
    "antenna": "XRAPTOR_ANTENNA",
    "workers": "XRAPTOR_WORKERS",
    "log_level": "XRAPTOR_LOG_LEVEL",
    "log_config": "XRAPTOR_LOG_CONFIG",
    "origin": "XRAPTOR_ORIGINS",
    "transport": "XRAPTOR_TRANSPORT",
    "ssl_certfile": "XRAPTOR_SSL_CERTFILE",
    "ssl_keyfile": "XRAPTOR_SSL_KEYFILE",
    "compression": "XRAPTOR_COMPRESSION",
}

#: the flags passed on as they are to the processes ``--reload`` and ``--workers`` start
_PASSED_ON = ("transport", "ssl_certfile", "ssl_keyfile", "compression")


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
        print(f"  schemes: {', '.join(f'{scheme}://' for scheme in info.schemes) or '-'}")
        print(f"  middlewares: {', '.join(info.middlewares) or '-'}")
        print(f"  guards: {', '.join(info.guards) or '-'}")
        print(f"  transports: {', '.join(info.transports) or '-'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import make_server

    try:
        transport = _transport(args) or "websockets"
    except UsageError as error:
        print(f"xraptor demo: error: {error}", file=sys.stderr)
        return USAGE
    server = make_server(args.host, args.port, transport=transport)
    print(
        f"xraptor demo chat: open http://{args.host}:{args.port}/ in a browser "
        f"(WebSocket ws://{args.host}:{args.port}, memory antenna, {transport} transport); "
        "Ctrl-C stops",
        flush=True,
    )
    server.run()
    return 0


def _transport(args: argparse.Namespace) -> str | None:
    """The transport asked for (``--transport``, else its environment variable), checked
    against the installed ones; ``None`` when none was asked for.

    :raises UsageError: no installed plugin offers it (the message lists those that do)
    """
    transport = _setting(args, "transport")
    if transport is not None:
        try:
            get_plugins().transport(transport)
        except KeyError as error:
            raise UsageError(str(error)) from None
    return transport


def _new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import ScaffoldError, scaffold

    try:
        names, folder, written = scaffold(args.name, args.dir)
    except ScaffoldError as error:
        print(f"xraptor new-plugin: error: {error}", file=sys.stderr)
        return USAGE
    print(f"created {names.dist} in {folder}/ (antenna {names.cls}, package {names.package}):")
    for path in written:
        print(f"  {path.relative_to(folder)}")
    print(
        f"next: cd {folder} && pip install -e '.[test]' && pytest\n"
        f"then replace the TODOs in {names.package}/antenna.py with your backend's calls"
    )
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
    transport = _transport(args)
    if transport is not None:
        app.transport = transport
    compression = _setting(args, "compression")
    if compression is not None:
        try:
            app.compression = None if compression == "none" else compression
        except ValueError:
            raise UsageError(
                f"compression must be shared, deflate or none, got {compression!r}"
            ) from None
    certfile, keyfile = _setting(args, "ssl_certfile"), _setting(args, "ssl_keyfile")
    if keyfile is not None and certfile is None:
        raise UsageError("--ssl-keyfile needs --ssl-certfile (the certificate chain)")
    if certfile is not None:
        app.ssl = _server_tls(certfile, keyfile)
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


def _server_tls(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """A server TLS context from a PEM certificate chain (and its key, if separate)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        raise UsageError(
            f"could not load the TLS certificate {certfile!r}"
            + (f" with key {keyfile!r}" if keyfile else "")
            + f": {error}"
        ) from None
    return context


def _passed_on(args: argparse.Namespace) -> list[str]:
    command: list[str] = []
    for name in _PASSED_ON:
        value = _setting(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", value]
    return command


def _run(args: argparse.Namespace) -> int:
    log_config = _setting(args, "log_config")
    try:
        if log_config is not None:  # before the app is imported: the app may refine it
            logs.apply_config_file(log_config)
        if args.reload:  # the parent watches files; the app is imported by its child
            from .reload import run_reloading

            if log_config is None:
                logs.configure_cli(args.log_level, explicit=args.log_level_explicit)
            return run_reloading(args, reload_command(args))
        app, workers = _configure(args)
    except (UsageError, logs.LogConfigError) as error:
        print(f"xraptor run: error: {error}", file=sys.stderr)
        return USAGE
    if log_config is None:  # after the import: an app that configured logging keeps it
        logs.configure_cli(args.log_level, explicit=args.log_level_explicit)
    elif args.log_level_explicit:
        logging.getLogger("xraptor").setLevel(args.log_level)
    if args.supervisor is not None:
        app.reuse_port = True
        from .server import run_coroutine

        run_coroutine(serve_worker(app, args.supervisor))
        return 0
    if workers == 1:
        app.run()
        return 0
    return supervise(_worker_command(args, app), app, workers)


def _log_options(args: argparse.Namespace) -> list[str]:
    """The logging flags for a child ``xraptor`` process (environment variables pass anyway)."""
    explicit = getattr(args, "log_level_explicit", False)  # set by main()
    options = ["--log-level", args.log_level] if explicit else []
    log_config = _setting(args, "log_config")
    return options + (["--log-config", log_config] if log_config is not None else [])


def reload_command(args: argparse.Namespace) -> list[str]:
    """The ``xraptor run`` command ``--reload`` restarts: the same flags, without ``--reload``."""
    command = [sys.executable, "-m", "xraptor.cli", *_log_options(args), "run", args.target]
    for flag in ("host", "port", "antenna", "workers"):
        value = getattr(args, flag, None)
        if value is not None:
            command += [f"--{flag}", str(value)]
    for origin in getattr(args, "origin", None) or []:
        command += ["--origin", origin]
    return command + _passed_on(args)


def _worker_command(args: argparse.Namespace, app: XRaptor) -> list[str]:
    command = [sys.executable, "-m", "xraptor.cli", *_log_options(args)]
    command += ["run", args.target, "--supervisor", str(os.getpid()), "--workers", "1"]
    command += ["--host", app.host, "--port", str(app.port)]
    antenna = _setting(args, "antenna")
    if antenna is not None:
        command += ["--antenna", antenna]
    for origin in _origins(args) or []:
        command += ["--origin", origin]
    return command + _passed_on(args)


# ----- the parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xraptor", description="xraptor: fast as a websocket, easy as HTTP"
    )
    parser.add_argument(
        "--version", action="version", version=f"xraptor {__version__}", help="print the version"
    )
    parser.add_argument("--log-level", help=f"logging level (default INFO; env {ENV['log_level']})")
    parser.add_argument("--log-config", metavar="FILE", help=LOG_CONFIG_HELP)
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
        "--transport",
        help=f"the listening transport (default websockets; env {ENV['transport']}); "
        "xraptor plugins lists the installed ones",
    )
    run.add_argument(
        "--compression",
        metavar="POLICY",
        help="permessage-deflate for clients that offer it: shared (default: each room "
        "message compressed once for all members), deflate (websockets' own, per "
        f"connection) or none (env {ENV['compression']})",
    )
    run.add_argument(
        "--ssl-certfile",
        metavar="FILE",
        help=f"serve wss:// with this PEM certificate chain (env {ENV['ssl_certfile']})",
    )
    run.add_argument(
        "--ssl-keyfile",
        metavar="FILE",
        help=f"the certificate's private key, if not in the chain file (env {ENV['ssl_keyfile']})",
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
    run.add_argument(
        "--log-config", metavar="FILE", default=argparse.SUPPRESS, help=LOG_CONFIG_HELP
    )
    run.add_argument(
        "--reload",
        action="store_true",
        help="restart the server when a .py file changes (development; needs watchfiles: "
        "pip install 'xraptor[reload]'; one process, so not with --workers)",
    )
    run.add_argument(
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="a directory --reload watches; repeat for more (default: the current directory)",
    )
    # set by the supervisor of --workers N on each worker it starts
    run.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    demo = sub.add_parser(
        "demo", help="serve the chat example and its web page on the memory antenna"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8765)
    demo.add_argument(
        "--transport",
        help=f"the listening transport (default websockets; env {ENV['transport']}), "
        "e.g. picows with the xraptor-picows plugin",
    )
    demo.set_defaults(func=_demo)

    plugins = sub.add_parser(
        "plugins",
        help="list the plugins found, with their antennas, URL schemes, middlewares, guards "
        "and transports",
    )
    plugins.set_defaults(func=_plugins)

    new_plugin = sub.add_parser(
        "new-plugin",
        help="scaffold an antenna plugin distribution: xraptor new-plugin NAME",
        description="Write a new plugin project xraptor-NAME (package xraptor_NAME, with "
        "dashes as underscores): pyproject.toml with the entry point, an antenna skeleton "
        "that works in-process, the conformance tests and a README. An existing folder "
        "that is not empty is refused.",
    )
    new_plugin.add_argument(
        "name", metavar="NAME", help="the antenna name, e.g. postgres or my-bus (lowercase)"
    )
    new_plugin.add_argument(
        "--dir",
        type=Path,
        metavar="PATH",
        help="the folder to create (default ./xraptor-NAME); an empty one is fine",
    )
    new_plugin.set_defaults(func=_new_plugin)
    return parser


LOG_CONFIG_HELP = (
    "a logging configuration file: .json or .yaml (logging.config.dictConfig), else INI "
    f"(logging.config.fileConfig); replaces xraptor's own logging set-up (env {ENV['log_config']})"
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = _setting(args, "log_level")
    level = (given or "INFO").upper()
    if not isinstance(logging.getLevelName(level), int):
        parser.error(f"unknown log level {given!r}")
    args.log_level, args.log_level_explicit = level, given is not None
    if args.func is not _run:  # `run` sets logging up around the app's import
        logs.configure_cli(level, explicit=False)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
