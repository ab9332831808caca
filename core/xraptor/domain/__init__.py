"""xraptor 0.4 import paths (``xraptor.domain.methods`` ...): thin aliases of the public names.

New code imports from ``xraptor`` itself (``xraptor.MethodType``, ``xraptor.Request``).
"""
