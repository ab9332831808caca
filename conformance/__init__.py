"""Protocol conformance: the kosoku suite against xraptor and a raw websockets echo server.

``python -m conformance`` (or ``nox -s conformance``) runs it; see ``conformance/README.md``.
"""
