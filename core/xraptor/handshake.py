"""What a connect guard sees of a WebSocket upgrade, and how it refuses one.

:class:`Handshake` is built from the upgrade request before the WebSocket opens;
:class:`Refuse` raised by a guard becomes an HTTP answer instead of the upgrade.

The bearer token comes from ``Authorization: Bearer <token>`` (the Python client,
any HTTP client) or, for browsers, which cannot set headers on a WebSocket, from
the subprotocol ``xraptor.bearer.<token in base64url, no padding>`` offered next
to ``xraptor``; the server then answers with the ``xraptor`` subprotocol.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from websockets.datastructures import Headers
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse
from websockets.typing import Subprotocol

from .redaction import SECRET_HEADERS, is_secret_name

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

#: the subprotocol the server answers with when a client offers it
SUBPROTOCOL = Subprotocol("xraptor")

#: the prefix of the subprotocol that carries a browser's token
BEARER_SUBPROTOCOL = "xraptor.bearer."

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+\Z")


class Refuse(Exception):
    """Raised by a connect guard: answer the upgrade with this HTTP status instead.

    :param status: an HTTP error status, 400 to 599 (401 unauthenticated, 403
        forbidden, 429 too many connections, 503 unavailable ...)
    :param reason: a short text sent as the response body; never put a token in it
    :param headers: extra response headers (``Retry-After``, ``WWW-Authenticate`` ...)
    :raises TypeError, ValueError: for a status that is not an int from 400 to 599
    """

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(status, int) or isinstance(status, bool):
            raise TypeError(f"Refuse status must be an int such as 401, got {status!r}")
        if not 400 <= status <= 599:
            raise ValueError(
                f"Refuse status must be an HTTP error status from 400 to 599 "
                f"(401, 403, 429 ...), got {status}"
            )
        if not isinstance(reason, str):
            raise TypeError(f"Refuse reason must be a str, got {type(reason).__name__}")
        self.status = status
        self.reason = reason or _phrase(status)
        self.headers = dict(headers or {})
        super().__init__(f"{status} {self.reason}")

    def response(self) -> HttpResponse:
        """The HTTP answer: the status, the reason as a plain-text body, the headers."""
        headers = Headers(self.headers)
        if self.status == HTTPStatus.UNAUTHORIZED and "WWW-Authenticate" not in headers:
            headers["WWW-Authenticate"] = "Bearer"
        return http_response(self.status, self.reason, headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Refused"


def http_response(status: int, text: str, headers: Headers | None = None) -> HttpResponse:
    """A plain-text HTTP response that ends the connection."""
    body = (text.rstrip("\n") + "\n").encode()
    headers = headers if headers is not None else Headers()
    headers["Content-Type"] = "text/plain; charset=utf-8"
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close"
    return HttpResponse(status, _phrase(status), headers, body)


@dataclass(slots=True)
class Handshake:
    """The WebSocket upgrade request, as connect guards see it.

    :ivar path: the request path without the query, as sent (not percent-decoded)
    :ivar query: the query parameters, decoded; a parameter given more than once
        keeps its first value (``raw_query`` has the whole query string)
    :ivar headers: the request headers, a case-insensitive mapping
        (``headers.get("X-Api-Key")``; ``headers.get_all(name)`` for repeated ones)
    :ivar cookies: the ``Cookie`` header's name/value pairs
    :ivar remote_ip: the peer's IP address (a reverse proxy's, behind one)
    :ivar origin: the ``Origin`` header, ``None`` when absent (not a browser)
    :ivar token: the bearer token, from ``Authorization: Bearer`` or the browser's
        ``xraptor.bearer.`` subprotocol; ``None`` when the client sent none
    :ivar identity: what the guards before this one returned (``None`` at first)
    """

    path: str
    query: dict[str, str]
    headers: Headers = field(repr=False)
    cookies: dict[str, str] = field(repr=False)
    remote_ip: str
    origin: str | None
    token: str | None = field(default=None, repr=False)
    identity: object = None
    raw_query: str = field(default="", repr=False)

    @classmethod
    def from_request(cls, request: HttpRequest, remote_ip: str = "") -> Handshake:
        """Read an upgrade request.

        :raises Refuse: (400) for an ambiguous or malformed token
        """
        headers = request.headers.copy()
        path, _, raw_query = request.path.partition("?")
        query: dict[str, str] = {}
        for name, value in parse_qsl(raw_query, keep_blank_values=True):
            query.setdefault(name, value)
        origins = headers.get_all("Origin")
        return cls(
            path=path,
            query=query,
            headers=headers,
            cookies=parse_cookies(headers.get_all("Cookie")),
            remote_ip=remote_ip,
            origin=origins[0] if len(origins) == 1 else None,
            token=read_token(headers),
            raw_query=raw_query,
        )

    def secrets(self) -> list[str]:
        """The values a log line about this handshake must not show."""
        values = [self.token or ""]
        for name in SECRET_HEADERS:
            values += self.headers.get_all(name)
        values += self.cookies.values()
        values += (value for name, value in self.query.items() if is_secret_name(name))
        return [value for value in values if value]


def parse_cookies(lines: Sequence[str]) -> dict[str, str]:
    """``name=value; other=value`` pairs of the Cookie headers (the first of a name wins)."""
    cookies: dict[str, str] = {}
    for line in lines:
        for pair in line.split(";"):
            name, sep, value = pair.strip().partition("=")
            if sep and name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                cookies.setdefault(name.strip(), value)
    return cookies


def offered_subprotocols(headers: Headers) -> list[str]:
    return [
        item.strip()
        for line in headers.get_all("Sec-WebSocket-Protocol")
        for item in line.split(",")
        if item.strip()
    ]


def read_token(headers: Headers) -> str | None:
    """The bearer token of a request, or ``None``.

    :raises Refuse: (400) for several Authorization headers, several token
        subprotocols, a token subprotocol that is not base64url, or two different tokens
    """
    from_header: str | None = None
    authorizations = headers.get_all("Authorization")
    if len(authorizations) > 1:
        raise Refuse(400, "the request has more than one Authorization header")
    if authorizations:
        scheme, _, credentials = authorizations[0].strip().partition(" ")
        if scheme.lower() == "bearer":
            from_header = credentials.strip()
            if not from_header:
                raise Refuse(400, "the Authorization header has an empty bearer token")
    carried = [p for p in offered_subprotocols(headers) if p.startswith(BEARER_SUBPROTOCOL)]
    if len(carried) > 1:
        raise Refuse(400, f"more than one {BEARER_SUBPROTOCOL} subprotocol was offered")
    from_subprotocol = _decode_subprotocol(carried[0]) if carried else None
    if None not in (from_header, from_subprotocol) and from_header != from_subprotocol:
        raise Refuse(
            400, "the Authorization header and the token subprotocol carry different tokens"
        )
    return from_header if from_header is not None else from_subprotocol


def _decode_subprotocol(subprotocol: str) -> str:
    encoded = subprotocol[len(BEARER_SUBPROTOCOL) :]
    if not _BASE64URL.match(encoded):
        raise Refuse(
            400,
            f"the {BEARER_SUBPROTOCOL} subprotocol must carry the token in base64url "
            "without padding",
        )
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Refuse(
            400, f"the {BEARER_SUBPROTOCOL} subprotocol does not decode to a UTF-8 token"
        ) from None


def encode_token_subprotocol(token: str) -> str:
    """The subprotocol a browser offers to carry ``token`` (what xraptor.js sends)."""
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return BEARER_SUBPROTOCOL + encoded


def select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Answer ``xraptor`` when the client offers it; a client offering none still connects."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


# ----- the client side ------------------------------------------------------------------


def handshake_headers(
    token: str | None, headers: Mapping[str, str] | None, additional: Any = None
) -> list[tuple[str, str]]:
    """The extra handshake headers: ``additional_headers``, ``headers``, then the token's.

    :raises TypeError, ValueError: for a token that is empty, not a str, or has
        whitespace, or a token given together with an ``Authorization`` header
    """
    items: list[tuple[str, str]] = []
    if additional is not None:
        items += list(Headers(additional).raw_items())
    items += list((headers or {}).items())
    if token is not None:
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        if not token or any(c.isspace() for c in token):
            raise ValueError("token must be a non-empty str without whitespace")
        if any(name.lower() == "authorization" for name, _ in items):
            raise ValueError(
                "give the token either as token= or as an Authorization header, not both"
            )
        items.append(("Authorization", f"Bearer {token}"))
    return items


# ----- the connection's identity ------------------------------------------------------
# The guards run in websockets' process_request, before the connection handler
# creates xraptor's Connection. The identity travels between the two on the
# websockets connection object, as websockets' own basic_auth stores ``username``
# there; this is the one place that knows the attribute (the websockets transport's
# connection class declares it as a slot: see xraptor.websocket_transport).

IDENTITY_ATTRIBUTE = "xraptor_identity"


def set_identity(ws: Any, identity: object) -> None:
    setattr(ws, IDENTITY_ATTRIBUTE, identity)


def identity_of(ws: Any) -> object:
    """The identity the connect guards gave this websockets connection (``None``)."""
    return getattr(ws, IDENTITY_ATTRIBUTE, None)
