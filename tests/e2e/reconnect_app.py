"""The reconnect scenario's chat app for ``xraptor run reconnect_app:app``: a second
server *process* on the scenario's backend (tests/e2e/test_reconnect_backends.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: reconnect_support

from reconnect_support import chat_app

#: ``xraptor run --antenna URL --port N`` sets the backend and the port
app = chat_app("memory://").app
