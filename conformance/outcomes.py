"""How one kosoku case ended, reduced to what xraptor and an echo server can share.

xraptor answers every message with a JSON frame instead of echoing it, so kosoku's
``behavior`` verdict (did the right messages come back?) says nothing useful about it.
What both servers must agree on is how the connection ended: which side sent the first
close frame, and the close code the server sent. That is an :class:`Outcome`.

kosoku sends its own close only once it has received the events a case expects (the
echo); otherwise it drops the connection when the case's timer runs out. Against
xraptor, a case such as "send a valid text message" therefore ends "left open" where
the echo server's ends "closed by the client"; in both the server accepted what it was
sent, so :func:`same_closing` counts the two as the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class _Verdict(Protocol):
    @property
    def value(self) -> str: ...


class CaseResult(Protocol):
    """The fields of kosoku's per-case result that the comparison reads."""

    @property
    def http_response(self) -> str: ...
    @property
    def closed_by_me(self) -> bool: ...
    @property
    def dropped_by_me(self) -> bool: ...
    @property
    def was_clean(self) -> bool: ...
    @property
    def was_open_handshake_timeout(self) -> bool: ...
    @property
    def was_close_handshake_timeout(self) -> bool: ...
    @property
    def remote_close_code(self) -> int | None: ...
    @property
    def local_close_code(self) -> int | None: ...
    @property
    def behavior(self) -> _Verdict: ...
    @property
    def behavior_close(self) -> _Verdict: ...


class Closer(Enum):
    """Who ended the connection."""

    SERVER = "server"  # the server sent the first close frame: it failed the connection
    SERVER_DROP = "server drop"  # the server closed TCP without a close frame
    CLIENT = "client"  # kosoku sent the first close frame; the server answered it
    LEFT_OPEN = "left open"  # nobody sent a close frame; kosoku gave up on its timer
    NO_RESULT = "no result"  # the case timed out, raised, or never completed the handshake


@dataclass(frozen=True, slots=True)
class Outcome:
    """The closing behaviour of one case against one server.

    :param code: the close code the server sent (first, or in answer to kosoku's)
    :param client_code: the close code kosoku sent, when it sent one
    :param clean: kosoku saw a complete closing handshake
    :param note: why there is no result, or the closing handshake timed out
    :param verdict: kosoku's own verdicts (messages / closing), for the JSON report only
    """

    closer: Closer
    code: int | None = None
    client_code: int | None = None
    clean: bool = False
    note: str = ""
    verdict: str = ""

    def __str__(self) -> str:
        clean = "" if self.clean else ", unclean"
        note = f" ({self.note})" if self.note else ""
        if self.closer is Closer.SERVER:
            return f"closed by server with {self.code}{clean}{note}"
        if self.closer is Closer.SERVER_DROP:
            return f"dropped by server, no close frame{note}"
        if self.closer is Closer.CLIENT:
            sent, answer = _code(self.client_code), _code(self.code)
            return f"closed by client with {sent}, server answered {answer}{clean}{note}"
        if self.closer is Closer.LEFT_OPEN:
            return "left open by server (client gave up)"
        return f"no result{note}"


def _code(code: int | None) -> str:
    return "no code" if code is None else str(code)


def classify(result: CaseResult) -> Outcome:
    """The :class:`Outcome` kosoku recorded for one case."""
    verdict = f"{result.behavior.value} / {result.behavior_close.value}"
    if not result.http_response.startswith("HTTP/1.1 101"):
        reason = "opening handshake timed out" if result.was_open_handshake_timeout else ""
        return Outcome(Closer.NO_RESULT, note=reason or "no WebSocket upgrade", verdict=verdict)
    note = "closing handshake timed out" if result.was_close_handshake_timeout else ""
    code, clean = result.remote_close_code, result.was_clean
    if result.closed_by_me:
        return Outcome(Closer.CLIENT, code, result.local_close_code, clean, note, verdict)
    if code is not None:
        return Outcome(Closer.SERVER, code, None, clean, note, verdict)
    if result.dropped_by_me:
        return Outcome(Closer.LEFT_OPEN, verdict=verdict)
    return Outcome(Closer.SERVER_DROP, note=note, verdict=verdict)


def no_result(note: str) -> Outcome:
    """The outcome of a case that timed out or raised."""
    return Outcome(Closer.NO_RESULT, note=note)


_NOT_FAILED = {Closer.CLIENT, Closer.LEFT_OPEN}


def same_closing(echo: Outcome, other: Outcome) -> bool:
    """Whether two servers ended a case the same way (see the module docstring)."""
    if Closer.NO_RESULT in (echo.closer, other.closer):
        return False  # nothing to compare: never a match
    if {echo.closer, other.closer} <= _NOT_FAILED and echo.closer is not other.closer:
        return True  # the server accepted the case's frames; only the echo differs
    return (echo.closer, echo.code, echo.clean) == (other.closer, other.code, other.clean)


def why(case_id: str, echo: Outcome, other: Outcome) -> str:
    """A short explanation of a known kind of difference, else an empty string."""
    group = case_id.split(".", 1)[0]
    if Closer.NO_RESULT in (echo.closer, other.closer):
        return "no result to compare; see the note"
    if echo.closer is Closer.SERVER and echo.code == 1007 and other.code != 1007:
        return "text with invalid UTF-8 not failed with 1007 (RFC 6455 8.1)"
    if 1009 in (echo.code, other.code):
        return "message size limit (max_size) differs"
    if group in ("12", "13"):
        return "permessage-deflate negotiation or its limits differ"
    if echo.closer is other.closer is Closer.SERVER:
        return "both failed the connection, with different close codes"
    if echo.closer is Closer.SERVER:
        return "the echo server fails this connection, xraptor does not"
    if other.closer is Closer.SERVER:
        return "xraptor fails this connection, the echo server does not"
    return ""
