"""A plugin whose hook name is misspelled: it must be refused alone, logged, not fatal."""

from typing import Any

import xraptor


@xraptor.hookimpl
def xraptor_register_antenas(registry: Any) -> None:
    raise AssertionError("never called: the hook does not exist")
