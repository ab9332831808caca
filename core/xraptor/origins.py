"""The Origin policy: which browser pages may open a WebSocket to this server.

A browser sends the page's origin (``scheme://host[:port]``) in the ``Origin``
header of every WebSocket upgrade, and sends the page's cookies with it whatever
the origin: a server that accepts any origin lets every web site open a socket
in its visitors' names (cross-site WebSocket hijacking). The policy:

* no ``Origin`` header: accepted (not a browser: scripts, services, the Python client);
* ``origins=None`` (the default): same-origin only, the Origin's host and port
  equal the ``Host`` header's (default ports 80/443 normalised, hosts compared
  case-insensitively, IPv6 literals canonicalised);
* ``origins=["https://app.example", ...]``: exactly those origins;
* ``origins=["*"]``: every origin.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

#: the port a URL scheme implies when none is written
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*\Z")

#: (scheme, host, port); port is None for a scheme without a default port
Origin = tuple[str, str, int | None]


class OriginError(ValueError):
    """An origin that cannot be parsed (in the configuration, or from a client)."""


def _host(host: str) -> str:
    """A lower-case host without a trailing dot; IPv6 literals canonicalised;
    internationalised names in their ASCII (punycode) form, which browsers send."""
    host = host.lower().rstrip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as error:
            raise OriginError(f"{host!r} is not a valid host name: {error}") from None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def parse_origin(text: str) -> Origin:
    """Parse ``scheme://host[:port]`` into its normalised parts.

    :raises OriginError: for ``null``, a path, a query, user info or a bad port
    """
    if text == "null":
        raise OriginError("the origin is 'null' (a sandboxed page or a file:// URL)")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise OriginError(f"{text!r} is not an origin: {error}") from None
    scheme = parts.scheme.lower()
    if not _SCHEME.match(scheme) or not parts.hostname or "//" not in text:
        raise OriginError(f"{text!r} is not an origin; expected scheme://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise OriginError(f"{text!r} is not an origin: it has user info")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise OriginError(f"{text!r} is not an origin: it has a path, query or fragment")
    return scheme, _host(parts.hostname), port if port is not None else DEFAULT_PORTS.get(scheme)


def _parse_host_header(text: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit("//" + text)
        port = parts.port
    except ValueError:
        raise OriginError(f"the Host header {text!r} is not host[:port]") from None
    if not parts.hostname or parts.path or parts.query or parts.username is not None:
        raise OriginError(f"the Host header {text!r} is not host[:port]")
    return _host(parts.hostname), port


def format_origin(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    if port is None or DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


class OriginPolicy:
    """Decides whether an upgrade's ``Origin`` may connect.

    :param origins: ``None`` for same-origin only, ``["*"]`` for every origin, or
        the origins allowed (``"https://app.example"``, ``"http://localhost:8000"``)
    :raises TypeError: for a single string or a non-string entry
    :raises ValueError: for an entry that is not ``scheme://host[:port]``, ``null``,
        or ``*`` mixed with other origins
    """

    def __init__(self, origins: Iterable[str] | None = None) -> None:
        self.any = False
        self.allowed: frozenset[Origin] | None = None
        if origins is None:
            return
        if isinstance(origins, str | bytes):
            raise TypeError(
                f"origins must be a list of origins such as ['https://app.example'], "
                f"not the single string {origins!r}"
            )
        entries = list(origins)
        for entry in entries:
            if not isinstance(entry, str):
                raise TypeError(f"origins must hold strings, got {entry!r}")
        if "*" in entries:
            if len(entries) > 1:
                raise ValueError(
                    "origins=['*'] allows every origin; give '*' alone, not with other origins"
                )
            self.any = True
            return
        allowed = set()
        for entry in entries:
            if entry.strip() == "null":
                raise ValueError(
                    "origins cannot allow 'null': sandboxed iframes and file:// pages of any "
                    "site send it. List real origins, or use ['*'] to allow every page"
                )
            try:
                allowed.add(parse_origin(entry.strip()))
            except OriginError as error:
                raise ValueError(
                    f"invalid entry in origins: {error}. Write origins like "
                    "'https://app.example' or 'http://localhost:8000'"
                ) from None
        self.allowed = frozenset(allowed)

    def describe(self) -> str:
        """The setting in words, for logs and errors."""
        if self.any:
            return "every origin"
        if self.allowed is None:
            return "same-origin pages only"
        return ", ".join(sorted(format_origin(o) for o in self.allowed)) or "no browser page"

    def refusal(self, origins: list[str], hosts: list[str]) -> str | None:
        """Why an upgrade with these ``Origin`` and ``Host`` headers is refused, or ``None``.

        :param origins: every ``Origin`` header of the request (usually zero or one)
        :param hosts: every ``Host`` header of the request
        """
        if not origins:
            return None
        if len(origins) > 1:
            return "the request has more than one Origin header"
        if self.any:
            return None
        try:
            origin = parse_origin(origins[0])
        except OriginError as error:
            return str(error)
        if self.allowed is not None:
            if origin in self.allowed:
                return None
            return f"the origin {format_origin(origin)} is not in the server's allowed origins"
        if len(hosts) != 1:
            return "the request needs exactly one Host header"
        try:
            host, port = _parse_host_header(hosts[0])
        except OriginError as error:
            return str(error)
        scheme, origin_host, origin_port = origin
        # A Host header without a port names the default port of the scheme the
        # client used, which the browser wrote in the Origin.
        if port is None:
            port = DEFAULT_PORTS.get(scheme)
        if origin_host == host and origin_port == port:
            return None
        return f"the origin {format_origin(origin)} is not this server's ({hosts[0]})"
