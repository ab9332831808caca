"""The bench application on the original xraptor 0.4.1, run in bench/.venv-041.

``python bench/_041_app.py --port P [--antenna memory|redis|nats --url URL]``

The same routes as the candidate (``bench/servers.py xraptor``), written against
the 0.4.1 API: ``GET /echo``, ``SUB /stream`` and the chat routes.
"""

from __future__ import annotations

import argparse

import orjson
import xraptor
from xraptor import Broadcast, Request, Response, XRaptor

from common import raise_nofile, run_loop


@XRaptor.register("/echo").as_get
async def echo(request: Request) -> Response:
    return Response.create(request.request_id, {}, request.payload, request.method)


@XRaptor.register("/stream").as_sub
async def stream(request: Request) -> None:
    return None


@XRaptor.register("/chat_messages").as_sub
async def join_chat(request: Request) -> None:
    chat_id = orjson.loads(request.payload)["chat_id"]
    Broadcast.get(chat_id).add_member(request.request_id)


@XRaptor.register("/chat_messages").as_unsub
async def leave_chat(request: Request) -> Response:
    chat_id = orjson.loads(request.payload)["chat_id"]
    Broadcast.get(chat_id).remove_member(request.request_id)
    return Response.create(request.request_id, {}, '{"message": "tchau!"}', request.method)


@XRaptor.register("/send_message_to_chat_room").as_post
async def send_message(request: Request) -> Response:
    data = orjson.loads(request.payload)
    antenna = XRaptor.get_antenna()
    body = orjson.dumps({"origin": data["client_id"], "message": data["message"]}).decode()
    await antenna.post(data["chat_id"], body)
    return Response.create(request.request_id, {}, '{"message": "Message sent"}', request.method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--antenna", choices=["memory", "redis", "nats"], default="memory")
    parser.add_argument("--url", default="")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    raise_nofile()
    server = XRaptor("127.0.0.1", args.port)
    if args.antenna == "redis":
        xraptor.antennas.RedisAntenna.set_config({"url": args.url})
        server.set_antenna(xraptor.antennas.RedisAntenna)
    elif args.antenna == "nats":
        xraptor.antennas.NatsAntenna.set_config({"servers": [args.url]})
        server.set_antenna(xraptor.antennas.NatsAntenna)
    else:
        server.set_antenna(xraptor.antennas.MemoryAntenna)
    run_loop(server.load_routes().serve(), args.loop)


if __name__ == "__main__":
    main()
