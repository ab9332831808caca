"""Files served over HTTP: the browser client and the demo's chat page."""

from __future__ import annotations

import functools
from importlib import resources

#: the path every server serves the browser client at
CLIENT_JS_PATH = "/_xraptor/client.js"
CLIENT_JS_TYPE = "text/javascript; charset=utf-8"


@functools.cache
def read(name: str) -> bytes:
    """The bytes of ``name`` in this package (read once)."""
    return resources.files(__package__).joinpath(name).read_bytes()
