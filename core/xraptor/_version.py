"""The version of the ``xraptor`` distribution (the one place it is written; see pyproject.toml)."""

__version__ = "0.5.0"
