"""A plugin whose import fails: it must be logged and must not stop other plugins."""

raise ImportError("xraptor_broken needs a module that is not installed")
