"""Sampled logging: one line per interval at INFO, the rest at DEBUG, with a count.

A flood of bad input (malformed frames on one connection, refused handshakes from
many) must cost the refusals' CPU, not the log's: each refusal is counted in
``/metrics`` and logged at DEBUG, and one sample line at most every ``interval``
seconds reaches INFO, saying how many it stands for.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any


class LogSampler:
    """Lets one log line through per ``interval`` seconds (at INFO by default)."""

    __slots__ = ("_last", "held_back", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: lines logged at DEBUG only since the last INFO sample
        self.held_back = 0
        self._last = -math.inf

    def log(
        self, logger: logging.Logger, message: str, *args: Any, level: int = logging.INFO
    ) -> bool:
        """Log at ``level`` if a sample is due (noting how many lines were held back),
        else at DEBUG. Returns whether the line went out at ``level``."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self.held_back += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(message, *args)
            return False
        self._last = now
        held, self.held_back = self.held_back, 0
        if held:
            message += " (%d more like it since the last sample, each logged at DEBUG)"
            args = (*args, held)
        logger.log(level, message, *args)
        return True
