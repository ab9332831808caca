"""The chat example: the xraptor 0.4 routes, served on the antenna you name.

python examples/chat_server.py                       # in-memory
python examples/chat_server.py redis://127.0.0.1:6379/0   # needs xraptor-redis
"""

from __future__ import annotations

import sys

import xraptor
from xraptor import demo  # noqa: F401  (registers /chat_messages and /send_message_to_chat_room)

if __name__ == "__main__":
    antenna = sys.argv[1] if len(sys.argv) > 1 else "memory"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    xraptor.XRaptor("127.0.0.1", port, antenna=antenna).load_routes().run()
