"""``servers.py``'s xraptor app with the fan-out room keeping history (for ``history_nats.py``):
``python _history_server.py HISTORY_SIZE <servers.py arguments>`` (0: no history).
"""

from __future__ import annotations

import re
import sys

import servers
from common import ROOM

import xraptor

if __name__ == "__main__":
    size = int(sys.argv[1])
    if size:
        # the default app's settings: the app servers.py makes inherits them
        xraptor.XRaptor.configure_rooms(re.escape(ROOM) + "$", history_size=size)
    servers.main(sys.argv[2:])
