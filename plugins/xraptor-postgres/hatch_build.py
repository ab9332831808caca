"""Hatch build hook of the sdist: leave out the repository's ``.gitignore``.

Hatch adds the ``.gitignore`` it finds (for a plugin: the repository's, two folders up) to
every sdist even when ``ignore-vcs`` is set; the sdists list their files explicitly, so it
is of no use there. The same file is in each distribution's folder (an sdist must build on
its own); ``tests/test_distributions.py`` checks that the copies are equal.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class SdistFiles(BuildHookInterface[BuilderConfig]):
    """Drops ``.gitignore`` from the files hatch adds on its own."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        forced: dict[str, str] = build_data["force_include"]
        for source in [s for s, target in forced.items() if PurePath(target).name == ".gitignore"]:
            del forced[source]
