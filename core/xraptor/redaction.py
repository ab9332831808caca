"""Keep credentials out of logs.

websockets logs every request and response header at DEBUG (``< Authorization:
Bearer ...``) and formats handshake errors that quote header values. xraptor hands
websockets a :class:`RedactingLogger` (its ``logger=`` option, server and client
side), which rewrites a record's arguments, message and exception text before the
record exists, so no handler, level or formatter can see the secret.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, TypeAlias

REDACTED = "[redacted]"

#: headers whose whole value is a credential
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)

#: words that make a query parameter's value a credential (``api_token``, ``x_api_key``...)
_SECRET_WORDS = r"token|key|secret|passw|jwt|auth|session|signature|credential"
_SECRET_NAME = re.compile(r"(?i)" + _SECRET_WORDS)

#: credentials inside free text: the token subprotocol, a bearer header value,
#: and query parameters whose name says they carry one
_PATTERNS = (
    (re.compile(r"(xraptor\.bearer\.)[^\s,;'\"]*"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s,;'\"]+"), r"\1\2" + REDACTED),
    (
        re.compile(r"(?i)([?&][^=&\s]*(?:" + _SECRET_WORDS + r")[^=&\s]*=)[^&\s'\"#]*"),
        r"\1" + REDACTED,
    ),
)


def is_secret_name(name: str) -> bool:
    """Whether a query parameter (or header) named ``name`` likely carries a credential."""
    return name.lower() in SECRET_HEADERS or _SECRET_NAME.search(name) is not None


_ExcInfo: TypeAlias = (
    bool
    | BaseException
    | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None]
    | None
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known ``secrets`` and credential-looking parts replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def format_exception(error: BaseException, secrets: Iterable[str] = ()) -> str:
    """The traceback of ``error`` as text, scrubbed."""
    return scrub("".join(traceback.format_exception(error)).rstrip(), secrets)


def _scrub_args(args: tuple[object, ...]) -> tuple[object, ...]:
    # websockets logs each header as ("< %s: %s", name, value)
    if len(args) == 2 and isinstance(args[0], str) and args[0].lower() in SECRET_HEADERS:
        return args[0], REDACTED
    return tuple(scrub(arg) if isinstance(arg, str) else arg for arg in args)


def _exception_of(exc_info: _ExcInfo) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1]
    if exc_info:
        return sys.exc_info()[1]
    return None


class RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that scrubs credentials from everything it logs.

    Header values of ``Authorization``, ``Cookie`` (and the like) become
    ``[redacted]``; the ``xraptor.bearer.`` subprotocol, ``Bearer <token>`` and
    token-like query parameters are replaced in messages, arguments and tracebacks.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def log(
        self,
        level: int,
        msg: object,
        *args: object,
        exc_info: _ExcInfo = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.isEnabledFor(level):
            return
        text = msg if isinstance(msg, str) else str(msg)
        safe_args = _scrub_args(args)
        error = _exception_of(exc_info)
        if error is None:
            text = scrub(text)
        else:
            # the exception's text may quote a header: log its scrubbed rendering
            # instead (formatted here, so the record has no args to apply to it)
            if safe_args:
                try:
                    text = text % safe_args
                except (TypeError, ValueError):
                    text = f"{text} {safe_args!r}"
                safe_args = ()
            text = f"{scrub(text)}\n{format_exception(error)}"
        self.logger.log(
            level,
            text,
            *safe_args,
            stack_info=stack_info,
            stacklevel=stacklevel + 1,
            extra=extra,
        )


def redacting_logger(name: str) -> RedactingLogger:
    """A :class:`RedactingLogger` over ``logging.getLogger(name)``."""
    return RedactingLogger(logging.getLogger(name))
