"""The antenna's options: defaults, checks, and the URL without its password."""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .frames import PREFIX

DEFAULT_URL = "postgresql://127.0.0.1:5432/postgres"
#: libpq's ``sslmode`` values (asyncpg takes them as its ``ssl`` argument)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _seconds(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"postgres antenna option {key!r} must be a number of seconds, got {value!r}"
        )
    if not value > 0 or math.isinf(value):
        raise ValueError(f"postgres antenna option {key!r} must be positive, got {value!r}")
    return float(value)


def _count(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"postgres antenna option {key!r} must be a positive integer, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Settings:
    """The checked options of one antenna (see :class:`~xraptor_postgres.PostgresAntenna`)."""

    url: str
    ssl: ssl.SSLContext | str | None
    prefix: str
    application_name: str
    publish_timeout: float
    connect_timeout: float
    reconnect_min_delay: float
    reconnect_max_delay: float
    max_message_size: int
    max_pending_publishes: int
    max_pending_size: int
    connect_options: dict[str, Any]

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Settings:
        """:raises ValueError, TypeError: on a bad option, saying which and what it expects"""
        url = options.get("url") or DEFAULT_URL
        if not isinstance(url, str):
            raise TypeError(f"postgres antenna option 'url' must be a str, got {url!r}")
        scheme = url.partition("://")[0]
        if scheme not in ("postgres", "postgresql"):
            raise ValueError(
                f"postgres antenna: {redact(url)!r} is not a postgres:// or postgresql:// URL"
            )
        tls = options.get("ssl")
        if isinstance(tls, str) and tls not in SSL_MODES:
            raise ValueError(
                f"postgres antenna option 'ssl' must be an ssl.SSLContext or one of "
                f"{', '.join(SSL_MODES)}; got {tls!r}"
            )
        if tls is not None and not isinstance(tls, str | ssl.SSLContext):
            raise TypeError(
                f"postgres antenna option 'ssl' must be an ssl.SSLContext or a str, got {tls!r}"
            )
        prefix = options.get("channel_prefix", "xraptor")
        if not isinstance(prefix, str) or not PREFIX.fullmatch(prefix):
            raise ValueError(
                "postgres antenna option 'channel_prefix' must be 1-30 lowercase letters, "
                f"digits or '_', starting with a letter or '_'; got {prefix!r}"
            )
        name = options.get("application_name", "xraptor")
        if not isinstance(name, str) or not name.isprintable() or len(name) > 60:
            raise ValueError(
                "postgres antenna option 'application_name' must be printable text of at "
                f"most 60 characters, got {name!r}"
            )
        extra = options.get("connect_options", {})
        if not isinstance(extra, dict):
            raise TypeError(
                "postgres antenna option 'connect_options' must be a dict of "
                f"asyncpg.connect() keyword arguments, got {extra!r}"
            )
        reconnect_min = _seconds(options, "reconnect_min_delay", 0.05)
        return cls(
            url=url,
            ssl=tls,
            prefix=prefix,
            application_name=name,
            publish_timeout=_seconds(options, "publish_timeout", 2.0),
            connect_timeout=_seconds(options, "connect_timeout", 2.0),
            reconnect_min_delay=reconnect_min,
            reconnect_max_delay=max(_seconds(options, "reconnect_max_delay", 5.0), reconnect_min),
            max_message_size=_count(options, "max_message_size", 1024 * 1024),
            max_pending_publishes=_count(options, "max_pending_publishes", 10_000),
            max_pending_size=_count(options, "max_pending_size", 64 * 1024 * 1024),
            connect_options=dict(extra),
        )

    @property
    def where(self) -> str:
        """The server, for messages and ``/health`` (no password)."""
        return redact(self.url)


def redact(url: str) -> str:
    """``url`` without the password it may carry (in its authority or its query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}@{host}"
    query = "&".join(
        "password=***" if item.partition("=")[0] == "password" else item
        for item in parts.query.split("&")
        if item
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
