"""Channel names to NATS subjects, safely.

Channel names come from clients, so none may become a wildcard (``*``, ``>``),
an empty token, or carry whitespace or control characters into the protocol.
Each name becomes exactly one literal token:

* ``"b" + base64url(utf8(name))`` without ``=`` padding, when that is at most
  :data:`MAX_ENCODED` characters long (names up to 150 bytes of UTF-8);
* ``"h" + sha256(utf8(name)).hexdigest()`` for longer names.

base64url is injective and sha256 is collision resistant, and the two forms
start with different letters, so distinct names get distinct subjects. The
base64url alphabet (``A-Z a-z 0-9 - _``) is valid in a NATS token.
"""

from __future__ import annotations

import base64
import hashlib
import re

#: longest base64url token kept as is; longer names are hashed
MAX_ENCODED = 200

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def channel_token(name: str) -> str:
    """The single NATS subject token that stands for channel ``name``."""
    raw = name.encode("utf-8", "surrogatepass")
    encoded = base64.urlsafe_b64encode(raw).rstrip(b"=")
    if len(encoded) <= MAX_ENCODED:
        return "b" + encoded.decode("ascii")
    return "h" + hashlib.sha256(raw).hexdigest()


def check_prefix(prefix: object, what: str = "subject_prefix") -> str:
    """Validate a subject prefix: dot-separated tokens of ``A-Z a-z 0-9 _ -``.

    :raises ValueError: on an empty prefix, an empty token, a wildcard or any
        other character (whitespace, control characters, ...)
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"{what} must be a non-empty str, got {prefix!r}")
    for token in prefix.split("."):
        if not _TOKEN.match(token):
            raise ValueError(
                f"{what} {prefix!r} must be dot-separated tokens of letters, digits, '_' or '-'"
            )
    return prefix
