"""0.4's ``xraptor.domain.request``: the same :class:`xraptor.Request`."""

from ..protocol import Request

__all__ = ["Request"]
