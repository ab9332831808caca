"""The wire format: requests, responses, error frames and push frames.

Request: ``{"request_id": str, "payload": str, "header": {..}, "route": str, "method": str}``
Response: ``{"request_id": str, "payload": str, "header": {..}, "method": str}``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .connection import Connection


class MethodType(Enum):
    """A request's method. ``str()`` and f-strings give the wire name (``POST``)."""

    POST = "POST"
    GET = "GET"
    SUB = "SUB"
    UNSUB = "UNSUB"
    PUT = "PUT"

    def __str__(self) -> str:
        return self._value_

    def __format__(self, format_spec: str) -> str:
        return format(self._value_, format_spec)

    # Members are singletons compared by identity, so identity hashing is consistent
    # with equality; Enum's own __hash__ is Python code, run on every route lookup.
    __hash__ = object.__hash__


_METHODS: dict[str, MethodType] = {m.value: m for m in MethodType}
_TYPES: dict[str, type] = {
    "request_id": str,
    "payload": str,
    "header": dict,
    "route": str,
    "method": str,
}


class ErrorCode:
    """The ``code`` of every error response (also in the ``error`` header)."""

    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_METHOD = "unknown_method"
    UNKNOWN_ROUTE = "unknown_route"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HANDLER_ERROR = "handler_error"
    MIDDLEWARE_ERROR = "middleware_error"
    STREAM_IN_USE = "stream_in_use"
    NOT_STREAM_OWNER = "not_stream_owner"
    UNKNOWN_STREAM = "unknown_stream"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    INVALID_RESPONSE = "invalid_response"
    MESSAGE_TOO_LARGE = "message_too_large"
    TOO_MANY_STREAMS = "too_many_streams"
    SHUTTING_DOWN = "shutting_down"


class RequestError(Exception):
    """A request that cannot be served; becomes an error response."""

    def __init__(
        self, code: str, message: str, request_id: str = "", method: str = "ERROR"
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.method = method

    @classmethod
    def about(cls, request: Request, code: str, message: str) -> RequestError:
        """An error answering ``request`` (its request_id and method echoed)."""
        return cls(code, message, request.request_id, request.method.value)

    def frame(self) -> bytes:
        return error_frame(self.code, self.message, self.request_id, self.method)


# Request and Response are plain (not frozen) slotted dataclasses: a frozen
# dataclass's __init__ costs three times as much, and both are built per request.
# The type checks try the exact type first, which is what the hot path hands them.


@dataclass(slots=True)
class Request:
    """A request; ``connection`` is the :class:`~xraptor.Connection` it came on
    (set by the server, not part of the wire format; ``None`` for a request built by hand)."""

    request_id: str
    payload: str
    header: dict[str, Any]
    route: str
    method: MethodType
    connection: Connection | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.request_id) is not str and not isinstance(self.request_id, str):
            raise TypeError(f"request_id is not of type {str}")
        if type(self.payload) is not str and not isinstance(self.payload, str):
            raise TypeError(f"payload is not of type {str}")
        if type(self.header) is not dict and not isinstance(self.header, dict):
            raise TypeError(f"header is not of type {dict}")
        if type(self.route) is not str and not isinstance(self.route, str):
            raise TypeError(f"route is not of type {str}")
        if type(self.method) is not MethodType:
            raise TypeError(f"method is not of type {MethodType}")

    def json(self) -> str:
        """The request as a JSON string (what a client sends)."""
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "payload": self.payload,
                "header": self.header,
                "route": self.route,
                "method": self.method.value,
            }
        ).decode()

    @classmethod
    def from_message(cls, message: str | bytes) -> Request:
        """Parse a wire message.

        :raises ValueError: (a :class:`RequestError`) when it is not a valid request
        """
        return parse_request(message)


class _ParseError(RequestError, ValueError):
    pass


_dumps = orjson.dumps
_loads = orjson.loads
_new_request = Request.__new__


def parse_request(message: str | bytes) -> Request:
    """Parse and validate one request; raise :class:`RequestError` (a ValueError) if bad."""
    try:
        data = _loads(message)
    except orjson.JSONDecodeError as error:
        raise _ParseError(
            ErrorCode.INVALID_JSON, f"the message is not valid JSON: {error}"
        ) from None
    if type(data) is dict:
        # the common case in one pass; anything else gets the detailed checks below
        try:
            request_id = data["request_id"]
            payload = data["payload"]
            header = data["header"]
            route = data["route"]
            method = _METHODS[data["method"]]
        except (KeyError, TypeError):
            pass
        else:
            if (
                type(request_id) is str
                and type(payload) is str
                and type(header) is dict
                and type(route) is str
            ):
                # the types were just checked: build it without __post_init__'s checks
                request = _new_request(Request)
                request.request_id = request_id
                request.payload = payload
                request.header = header
                request.route = route
                request.method = method
                request.connection = None
                return request
    return _parse_slowly(data)


def _parse_slowly(data: object) -> Request:
    if type(data) is not dict:
        raise _ParseError(
            ErrorCode.INVALID_REQUEST,
            f"a request must be a JSON object, got {_json_type(data)}",
        )
    request_id = data.get("request_id")
    rid = request_id if type(request_id) is str else ""
    raw_method = data.get("method")
    method_name = raw_method.upper() if type(raw_method) is str else ""
    echo = method_name if method_name in _METHODS else "ERROR"
    for name in _TYPES:
        if name not in data:
            raise _ParseError(
                ErrorCode.MISSING_FIELD, f"the request has no {name!r} field", rid, echo
            )
        if type(data[name]) is not _TYPES[name]:
            raise _ParseError(
                ErrorCode.INVALID_FIELD,
                f"field {name!r} must be a {_json_name(_TYPES[name])}, "
                f"got {_json_type(data[name])}",
                rid,
                echo,
            )
    method = _METHODS.get(method_name)
    if method is None:
        raise _ParseError(
            ErrorCode.UNKNOWN_METHOD,
            f"unknown method {str(raw_method)[:32]!r}; expected one of GET, POST, PUT, SUB, UNSUB",
            rid,
        )
    return Request(rid, data["payload"], data["header"], data["route"], method)


def _json_name(kind: type) -> str:
    return "string" if kind is str else "object"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass(slots=True)
class Response:
    request_id: str
    payload: str
    header: dict[str, Any]
    method: MethodType | None = None

    def __post_init__(self) -> None:
        if type(self.request_id) is not str and not isinstance(self.request_id, str):
            raise TypeError(f"request_id is not of type {str}")
        if type(self.header) is not dict and not isinstance(self.header, dict):
            raise TypeError(f"header is not of type {dict}")
        if type(self.payload) is not str and not isinstance(self.payload, str):
            raise TypeError(f"payload is not of type {str}")
        if self.method is not None and type(self.method) is not MethodType:
            raise TypeError(f"method is not of type {MethodType}")

    @classmethod
    def create(
        cls,
        request_id: str,
        header: dict[str, Any],
        payload: str,
        method: MethodType | None = None,
    ) -> Response:
        """Create a response (``method`` defaults to the request's when sent)."""
        return cls(request_id, payload, header, method)

    def encode(self, default_method: MethodType | None = None) -> bytes:
        """The response as UTF-8 JSON bytes."""
        method = self.method or default_method
        return _dumps(
            {
                "request_id": self.request_id,
                "payload": self.payload,
                "header": self.header,
                "method": method._value_ if method is not None else "",
            }
        )

    def json(self) -> str:
        """The response as a JSON string."""
        return self.encode().decode()


def error_payload(code: str, message: str, **extra: Any) -> str:
    return orjson.dumps({"code": code, "message": message, **extra}).decode()


def error_response(
    code: str, message: str, request: Request | None = None, **extra: Any
) -> Response:
    """An error :class:`Response` (middlewares use this to refuse a request)."""
    return Response(
        request_id=request.request_id if request is not None else "",
        payload=error_payload(code, message, **extra),
        header={"error": code},
        method=request.method if request is not None else None,
    )


def error_frame(code: str, message: str, request_id: str = "", method: str = "ERROR") -> bytes:
    return orjson.dumps(
        {
            "request_id": request_id,
            "payload": error_payload(code, message),
            "header": {"error": code},
            "method": method,
        }
    )


def push_prefix(request_id: str) -> bytes:
    """The start of every push frame of one stream: ``{"request_id":"..."``."""
    return b'{"request_id":' + orjson.dumps(request_id)


def push_tail(message: str, header: bytes = b"{}") -> bytes:
    """The rest of a push frame: the same for every member receiving ``message``."""
    return b',"payload":' + orjson.dumps(message) + b',"header":' + header + b',"method":"SUB"}'


#: built-in route answered ``pong`` by every server (GET)
PING_ROUTE = "/_xraptor/ping"

#: header keys the protocol reserves (clients and handlers should not use them otherwise):
#: ``ack`` (a SUB asks for, and its acknowledgment carries, ``{"ack": true}``), ``since``,
#: ``notice`` (gap, join and leave notices), ``error`` (error responses), ``room``,
#: ``position`` and ``presence`` (what a SUB shares in rooms with presence)
RESERVED_HEADERS = ("ack", "since", "notice", "error", "room", "position", "presence")

#: the header key of a SUB that asks for an acknowledgment
ACK = "ack"


def ack_frame(request_id: str) -> bytes:
    """The acknowledgment of a SUB that asked for one: the stream is open and subscribed."""
    return _dumps(
        {
            "request_id": request_id,
            "payload": '{"message": "subscribed"}',
            "header": {ACK: True},
            "method": "SUB",
        }
    )


GAP_HEADER = b'{"notice":"gap"}'
GAP_PAYLOAD = (
    '{"code": "gap", "message": "the pub/sub backend was unreachable; '
    'messages published meanwhile may have been missed"}'
)
GAP_TAIL = push_tail(GAP_PAYLOAD, GAP_HEADER)
