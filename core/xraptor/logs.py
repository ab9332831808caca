"""Logging set-up that leaves an application's own configuration alone.

Three entry points:

* :func:`serve_defaults`, called by ``XRaptor.serve()`` (so ``run()`` and
  ``xraptor run`` too): when nothing configured logging (the root logger and the
  ``xraptor`` logger have no handlers), the ``xraptor`` logger gets one stderr
  handler at INFO, so a plain script shows the start-up line; ``logging.lastResort``
  alone would show only warnings. It also quiets websockets (below).
* :func:`configure_cli`, called by ``xraptor run`` once the app is imported (so an
  app that configures logging at import wins): ``logging.basicConfig`` at the
  ``--log-level`` only when the root logger has no handlers yet.
* :func:`apply_config_file`, for ``xraptor run --log-config FILE``: a ``.json``,
  ``.yaml``/``.yml`` (PyYAML) ``logging.config.dictConfig`` file, or any other
  file in ``logging.config.fileConfig`` (INI) format. Applied before the app is
  imported; existing loggers stay enabled unless the file says otherwise.

websockets logs every connection opened and closed, and every plain HTTP answer
(``/health`` probes, the browser client), at INFO. xraptor sets the ``websockets``
logger to WARNING unless its level was set already (by the app or a config file)
or DEBUG is asked for, so those lines appear only at DEBUG.
"""

from __future__ import annotations

import json
import logging
import logging.config
from pathlib import Path
from typing import Any

#: the format of the handlers xraptor installs itself
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger("xraptor")


class LogConfigError(ValueError):
    """A ``--log-config`` file that cannot be read or applied."""


def configured() -> bool:
    """Whether something configured logging: the root or the ``xraptor`` logger has handlers."""
    return bool(logging.getLogger().handlers or logger.handlers)


def quiet_websockets() -> None:
    """Set the ``websockets`` logger to WARNING, unless its level is set or DEBUG is on."""
    websockets = logging.getLogger("websockets")
    if websockets.level == logging.NOTSET and not websockets.isEnabledFor(logging.DEBUG):
        websockets.setLevel(logging.WARNING)


def serve_defaults() -> None:
    """Make ``xraptor``'s INFO lines visible when nothing configured logging; quiet websockets."""
    if not configured() and logger.level == logging.NOTSET:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    quiet_websockets()


def configure_cli(level: str, *, explicit: bool) -> None:
    """``xraptor``'s own logging set-up, after the app was imported.

    :param level: the ``--log-level`` (``INFO`` by default)
    :param explicit: whether the level was asked for (flag or environment variable);
        if the app configured logging itself, only then is it applied, to the
        ``xraptor`` logger alone
    """
    if not configured():
        logging.basicConfig(level=level, format=LOG_FORMAT)
    elif explicit:
        logger.setLevel(level)
    quiet_websockets()


def apply_config_file(path: str) -> None:
    """Apply a logging configuration file (see the module's documentation).

    :raises LogConfigError: when the file is missing, malformed or rejected by logging
    """
    file = Path(path)
    if not file.is_file():
        raise LogConfigError(f"no such logging configuration file: {path}")
    suffix = file.suffix.lower()
    try:
        if suffix in (".json", ".yaml", ".yml"):
            config = _load_dict(file, suffix)
            config.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(config)
        else:
            logging.config.fileConfig(file, disable_existing_loggers=False)
    except LogConfigError:
        raise
    except Exception as error:  # logging.config raises ValueError, KeyError, configparser errors
        raise LogConfigError(f"cannot apply {path}: {type(error).__name__}: {error}") from None


def _load_dict(file: Path, suffix: str) -> dict[str, Any]:
    text = file.read_text(encoding="utf-8")
    if suffix == ".json":
        data: object = json.loads(text)
    else:
        try:
            import yaml  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise LogConfigError(
                f"{file} is YAML, which needs PyYAML: pip install pyyaml (or use a .json "
                "dictConfig file, or an INI fileConfig file)"
            ) from None
        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise LogConfigError(f"{file} must hold a logging.config.dictConfig mapping")
    return data


def ws_url(host: str, port: int, *, tls: bool = False) -> str:
    """``ws://host:port`` (``wss://`` with TLS) for the start-up line (IPv6 literals
    in brackets)."""
    host = host or "0.0.0.0"
    scheme = "wss" if tls else "ws"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
