"""xraptor 0.4 import paths (``xraptor.core.interfaces``): thin aliases of the public names."""
