"""0.4's ``xraptor.domain.response``: the same :class:`xraptor.Response`."""

from ..protocol import Response

__all__ = ["Response"]
