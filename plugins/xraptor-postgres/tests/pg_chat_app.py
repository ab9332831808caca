"""The xraptor 0.4 chat (``xraptor.demo``'s routes) as an app for ``xraptor run``.

``xraptor run pg_chat_app:app --antenna postgresql://... --port P`` (from this folder).
"""

from __future__ import annotations

import xraptor
from xraptor import demo  # noqa: F401  (registers the chat routes)

app = xraptor.XRaptor("127.0.0.1", 8765)
