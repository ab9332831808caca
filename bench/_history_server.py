"""``servers.py``'s xraptor app with the fan-out room keeping history (for ``history_nats.py``):
``python _history_server.py HISTORY_SIZE <servers.py arguments>`` (0: no history). The
NATS antenna's ``subject_prefix`` is ``$XRAPTOR_BENCH_NATS_PREFIX`` when set (the run's
own streams, deleted after it).
"""

from __future__ import annotations

import os
import re
import sys

import servers
from common import ROOM

import xraptor

if __name__ == "__main__":
    prefix = os.environ.get("XRAPTOR_BENCH_NATS_PREFIX")
    if prefix:
        from xraptor_nats.antenna import NatsAntenna

        NatsAntenna.set_config({"subject_prefix": prefix})
    size = int(sys.argv[1])
    if size:
        # the default app's settings: the app servers.py makes inherits them
        xraptor.XRaptor.configure_rooms(re.escape(ROOM) + "$", history_size=size)
    servers.main(sys.argv[2:])
