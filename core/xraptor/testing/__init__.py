"""What plugin and application authors import in their tests.

* :class:`AntennaConformance`: the antenna contract as a pytest suite. Subclass
  it in a ``Test...`` class and provide an ``antenna_factory`` fixture that
  returns a callable making a new, unstarted antenna; two antennas from the
  factory must behave like two processes sharing one backend.
* :func:`eventually`: poll an async condition with a deadline.
* :func:`health`: a running server's ``/health`` status and document;
  :func:`seconds_until_health`: how long until it answers a given status.
* :func:`self_signed_cert`: a throw-away TLS certificate (needs ``openssl``).
* :func:`xraptor.testing.faults.freeze_and_thaw`: a backend frozen under a running
  server turns ``/health`` to 503 and back (for antennas that implement ``ping``).
"""

from .conformance import AntennaConformance, eventually
from .http import health, seconds_until_health
from .tls import self_signed_cert

__all__ = [
    "AntennaConformance",
    "eventually",
    "health",
    "seconds_until_health",
    "self_signed_cert",
]
