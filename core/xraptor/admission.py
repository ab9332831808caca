"""Admission: the Origin policy, then the connect guards, before a WebSocket opens.

:func:`admit` runs for every upgrade request, before the WebSocket opens (in
websockets' ``process_request`` on the native transport, on ``websocket.connect``
under ASGI).
It answers an HTTP error (403 for an Origin the policy refuses, the status of a
guard's :class:`~xraptor.Refuse`, 500 for a guard that failed) or lets the
upgrade proceed with the identity the guards returned.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable

from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from .guards import Guard
from .handshake import Handshake, Refuse, http_response
from .origins import OriginPolicy
from .redaction import format_exception, scrub
from .sampling import LogSampler

logger = logging.getLogger("xraptor.admission")


def is_upgrade(request: HttpRequest) -> bool:
    """Whether the request asks for a WebSocket (plain HTTP GETs are not checked)."""
    return any("websocket" in value.lower() for value in request.headers.get_all("Upgrade"))


class Admitted:
    """An upgrade the policy and the guards let through, with what the guards returned."""

    __slots__ = ("identity",)

    def __init__(self, identity: object) -> None:
        self.identity = identity


async def admit(
    request: HttpRequest,
    remote_ip: str,
    policy: OriginPolicy,
    guards: Iterable[tuple[str, Guard]],
    log: LogSampler,
) -> HttpResponse | Admitted:
    """:class:`Admitted` to open the WebSocket, or the HTTP answer that refuses it.

    Transport-neutral: each transport builds ``request`` (path with query, headers)
    from its own handshake. Refusals are logged through ``log``: one sample line at
    INFO per interval, every one at DEBUG, so a flood of refused upgrades does not
    flood the log.
    """
    origins = request.headers.get_all("Origin")
    why = policy.refusal(origins, request.headers.get_all("Host"))
    if why is not None:
        shown = origins[0] if len(origins) == 1 else origins
        log.log(
            logger,
            "refused a WebSocket upgrade from %s with Origin %.200r: %s (allowed: %s). "
            "To allow it: XRaptor(..., origins=[...]), xraptor run --origin URL, "
            "or XRAPTOR_ORIGINS=URL,URL",
            remote_ip,
            shown,
            why,
            policy.describe(),
        )
        return http_response(403, f"Forbidden: cross-origin WebSocket refused: {why}.")
    try:
        handshake = Handshake.from_request(request, remote_ip)
    except Refuse as refusal:
        log.log(logger, "refused a WebSocket upgrade from %s: %s", remote_ip, refusal)
        return refusal.response()
    for name, guard in guards:
        try:
            outcome: object = guard(handshake)
            result = await outcome if inspect.isawaitable(outcome) else outcome
        except Refuse as refusal:
            log.log(
                logger,
                "guard %s refused a WebSocket upgrade from %s: %d %s",
                name,
                remote_ip,
                refusal.status,
                scrub(refusal.reason, handshake.secrets()),
            )
            return refusal.response()
        except Exception as error:
            # never logger.exception(): the error's text may quote the token; sampled,
            # since anyone can send what makes a guard fail, once per upgrade
            log.log(
                logger,
                "guard %s failed on a WebSocket upgrade from %s; answered 500\n%s",
                name,
                remote_ip,
                format_exception(error, handshake.secrets()),
                level=logging.ERROR,
            )
            return http_response(500, "Internal Server Error: a connect guard failed.")
        if result is not None:
            handshake.identity = result
    return Admitted(handshake.identity)
