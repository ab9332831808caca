"""A terminal chat client for the chat example (plain websockets, no xraptor needed).

    python examples/chat_client.py ROOM [ws://127.0.0.1:8765]

Type a line to send it; "/quit" leaves the room.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from websockets.asyncio.client import ClientConnection, connect


def request(request_id: str, route: str, method: str, **payload: str) -> str:
    return json.dumps(
        {
            "request_id": request_id,
            "payload": json.dumps(payload),
            "header": {},
            "route": route,
            "method": method,
        }
    )


async def show(ws: ClientConnection, sub_id: str, me: str) -> None:
    async for raw in ws:
        message = json.loads(raw)
        if message["request_id"] != sub_id:
            if "error" in message["header"]:
                print("!", json.loads(message["payload"])["message"])
            continue
        data = json.loads(message["payload"])
        if message["header"].get("notice") == "gap":
            print("! some messages may have been missed")
        else:
            who = "you" if data["origin"] == me else data["origin"][:8]
            print(f"{who}: {data['message']}")


async def chat(room: str, url: str) -> None:
    me, sub_id = uuid.uuid4().hex, uuid.uuid4().hex
    async with connect(url) as ws:
        await ws.send(request(sub_id, "/chat_messages", "SUB", chat_id=room))
        printer = asyncio.create_task(show(ws, sub_id, me))
        print(f"in room {room!r}; /quit leaves")
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line or line.strip() == "/quit":
                break
            await ws.send(
                request(
                    uuid.uuid4().hex,
                    "/send_message_to_chat_room",
                    "POST",
                    chat_id=room,
                    client_id=me,
                    message=line.rstrip("\n"),
                )
            )
        await ws.send(request(sub_id, "/chat_messages", "UNSUB", chat_id=room))
        await asyncio.sleep(0.2)
        printer.cancel()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(chat(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ws://127.0.0.1:8765"))
