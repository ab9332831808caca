"""The ``xraptor`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from .plugins import get_plugins


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
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo  # noqa: F401  (registers the chat routes)
    from .server import XRaptor

    server = XRaptor(args.host, args.port, antenna="memory")
    print(f"xraptor demo chat on ws://{args.host}:{args.port} (memory antenna); Ctrl-C stops")
    server.load_routes().run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xraptor", description="xraptor: fast as a websocket, easy as HTTP"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="serve the 0.4 chat example on the memory antenna")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8765)
    demo.set_defaults(func=_demo)
    plugins = sub.add_parser(
        "plugins", help="list the plugins found, with their antennas and middlewares"
    )
    plugins.set_defaults(func=_plugins)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
