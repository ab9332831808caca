"""HTTP answers the transports share (the health check, metrics, static files, 503)."""

from __future__ import annotations

from http import HTTPStatus

from websockets.datastructures import Headers
from websockets.http11 import Response as HttpResponse


def http_answer(status: HTTPStatus, content_type: str, body: bytes) -> HttpResponse:
    """An HTTP response with ``body`` of ``content_type``."""
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return HttpResponse(status.value, status.phrase, headers, body)


#: the answer to a WebSocket upgrade while the server drains
DRAINING_RESPONSE = http_answer(
    HTTPStatus.SERVICE_UNAVAILABLE,
    "text/plain; charset=utf-8",
    b"the server is shutting down; connect again to another instance\n",
)
