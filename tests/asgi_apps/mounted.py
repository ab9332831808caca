"""A FastAPI application with two xraptor apps mounted, as a user would write it.

- ``/realtime``: the 0.4 chat (the demo's routes and page), open to everyone;
- ``/secure``: an app whose connect guard wants the bearer token ``let-me-in``;
- ``/hello``: an ordinary FastAPI route.

Served by the tests with ``uvicorn mounted:api`` (or ``hypercorn``) in a real process.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI

import xraptor
from xraptor.demo import make_server

chat = make_server(antenna=os.environ.get("XRAPTOR_TEST_ANTENNA", "memory"))

secure = xraptor.XRaptor()


@secure.on_connect
async def needs_token(handshake: xraptor.Handshake) -> object:
    if handshake.token != "let-me-in":
        raise xraptor.Refuse(401, "a valid token is required")
    return {"user": "alice", "path": handshake.path}


@secure.register("/whoami").as_get
async def whoami(request: xraptor.Request) -> xraptor.Response:
    identity = json.dumps(request.connection.identity)
    return xraptor.Response.create(request.request_id, {}, identity, request.method)


@chat.register("/pid").as_get
async def pid(request: xraptor.Request) -> xraptor.Response:
    return xraptor.Response.create(request.request_id, {}, str(os.getpid()), request.method)


api = FastAPI(lifespan=chat.asgi_app().lifespan)


@api.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "from FastAPI"}


api.mount("/realtime", chat.asgi_app())
api.mount("/secure", secure.asgi_app())

#: the chat app served on its own (``uvicorn mounted:asgi``)
asgi = chat.asgi_app()
