"""Fixtures of the xraptor-picows tests (defined in picows_support)."""

from picows_support import fresh_xraptor, make_app

__all__ = ["fresh_xraptor", "make_app"]
