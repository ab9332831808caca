"""The xraptor 0.4 chat example, served by ``xraptor demo``.

Routes:

* ``/chat_messages`` SUB with payload ``{"chat_id": ...}`` joins a room; UNSUB leaves it;
* ``/send_message_to_chat_room`` POST with ``{"chat_id", "client_id", "message"}``
  posts ``{"origin": client_id, "message": message}`` to the room.

:func:`make_server` also serves the chat web page (``static/chat.html``, built on
the browser client) at ``GET /`` on the WebSocket port.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import static
from .broadcast import Broadcast
from .protocol import ErrorCode, Request, RequestError, Response
from .server import XRaptor


def _field(request: Request, *names: str) -> list[str]:
    try:
        data = orjson.loads(request.payload)
    except orjson.JSONDecodeError:
        data = None
    values = [data.get(name) if isinstance(data, dict) else None for name in names]
    if not all(isinstance(v, str) and v for v in values):
        raise RequestError.about(
            request,
            ErrorCode.INVALID_FIELD,
            f"payload must be a JSON object with string fields {', '.join(names)}",
        )
    return values  # type: ignore[return-value]


@XRaptor.register("/chat_messages").as_sub
async def join_chat(request: Request) -> None:
    (chat_id,) = _field(request, "chat_id")
    Broadcast.get(chat_id).add_member(request.request_id)


@XRaptor.register("/chat_messages").as_unsub
async def leave_chat(request: Request) -> Response:
    (chat_id,) = _field(request, "chat_id")
    Broadcast.get(chat_id).remove_member(request.request_id)
    return Response.create(request.request_id, {}, '{"message": "tchau!"}', request.method)


@XRaptor.register("/send_message_to_chat_room").as_post
async def send_message(request: Request) -> Response:
    chat_id, client_id, message = _field(request, "chat_id", "client_id", "message")
    antenna = XRaptor.get_antenna()
    await antenna.post(chat_id, orjson.dumps({"origin": client_id, "message": message}).decode())
    return Response.create(request.request_id, {}, '{"message": "Message sent"}', request.method)


def make_server(host: str = "127.0.0.1", port: int = 8765, **options: Any) -> XRaptor:
    """The demo server: the chat routes, the memory antenna and the page at ``/``."""
    options.setdefault("antenna", "memory")
    server = XRaptor(host, port, **options)
    server.add_http_route("/", "text/html; charset=utf-8", static.read("chat.html"))
    return server.load_routes()
