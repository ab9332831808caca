"""nats-py's errors, as the antenna reports them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors

from xraptor.antenna import AntennaError, AntennaUnavailable

#: nats-py errors that mean "the server cannot take this now"
UNAVAILABLE: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.TimeoutError,
    nats.errors.FlushTimeoutError,
    TimeoutError,
    OSError,
)
#: what best-effort steps (unsubscribe, confirmations on close) may meet
ANY_NATS: tuple[type[BaseException], ...] = (*UNAVAILABLE, nats.errors.Error, AntennaUnavailable)
#: what reading a republished message's position may meet (a stream lookup, a bad header)
LOCATE_FAILURES: tuple[type[BaseException], ...] = (*ANY_NATS, ValueError)


@contextlib.asynccontextmanager
async def jetstream_errors(what: str) -> AsyncIterator[None]:
    """Raise JetStream's failures while doing ``what`` as the antenna contract's errors.

    :raises AntennaUnavailable: the server did not answer in time, or has no JetStream
    :raises AntennaError: JetStream refused the request
    """
    try:
        yield
    except nats.js.errors.ServiceUnavailableError as error:
        raise AntennaUnavailable(
            f"could not {what}: JetStream does not answer (room history needs a NATS "
            "server with JetStream enabled: nats-server -js)"
        ) from error
    except nats.js.errors.APIError as error:
        raise AntennaError(f"JetStream refused to {what}: {error}") from error
    except UNAVAILABLE as error:
        raise AntennaUnavailable(f"could not {what}: {type(error).__name__}: {error}") from error
