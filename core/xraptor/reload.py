"""``xraptor run --reload``: restart the server process when a Python file changes.

The parent process never imports the app: it watches the directories with
`watchfiles <https://watchfiles.helpmanual.io>`_ (an optional dependency,
``pip install 'xraptor[reload]'``) and runs ``xraptor run`` without ``--reload`` as
a child. On a change it stops the child with SIGINT (the server drains as on any
shutdown; SIGKILL after :data:`STOP_TIMEOUT` seconds) and starts a new one, so an
app that fails to import is retried at the next change. SIGTERM or SIGINT to the
parent stops the child and the parent. One process only: ``--workers`` above 1 is
refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Iterable

logger = logging.getLogger("xraptor.reload")

#: seconds a child gets to drain after SIGINT before it is killed
STOP_TIMEOUT = 15

#: exit code of a usage error
USAGE = 2


def run_reloading(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``command`` (an ``xraptor run`` without ``--reload``), restarting it on changes."""
    try:
        from watchfiles import PythonFilter, run_process
    except ImportError:
        return _refuse(
            "--reload needs the watchfiles package: pip install 'xraptor[reload]' "
            "(or pip install watchfiles)"
        )
    workers = getattr(args, "workers", None) or os.environ.get("XRAPTOR_WORKERS")
    if workers not in (None, "", "1"):
        return _refuse(
            f"--reload runs one server process; it cannot be combined with --workers {workers}"
        )
    directories = [os.path.abspath(d) for d in (args.reload_dir or [os.getcwd()])]
    for directory in directories:
        if not os.path.isdir(directory):
            return _refuse(f"--reload-dir {directory!r} is not a directory")
    logger.info("xraptor --reload: watching %s for changes to .py files", ", ".join(directories))
    run_process(
        *directories,
        target=shlex.join(command),
        target_type="command",
        watch_filter=PythonFilter(),
        callback=_changed,
        sigint_timeout=STOP_TIMEOUT,
    )
    return 0


def _changed(changes: Iterable[tuple[object, str]]) -> None:
    paths = sorted({path for _, path in changes})
    shown = ", ".join(os.path.relpath(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    logger.info("xraptor --reload: %s changed; restarting", shown)


def _refuse(message: str) -> int:
    print(f"xraptor run: error: {message}", file=sys.stderr)
    return USAGE
