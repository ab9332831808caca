"""Fixtures of the core tests (defined in core_support)."""

from core_support import fresh_xraptor, make_client, make_server

__all__ = ["fresh_xraptor", "make_client", "make_server"]
