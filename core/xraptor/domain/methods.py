"""0.4's ``xraptor.domain.methods``: the same :class:`xraptor.MethodType`."""

from ..protocol import MethodType

__all__ = ["MethodType"]
