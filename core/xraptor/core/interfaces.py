"""0.4's ``xraptor.core.interfaces``: the same :class:`xraptor.Antenna`.

The contract changed in 0.5: a class written against the 0.4 interface
(``subscribe``/``stop_listening``/``post``/``is_alive``) is refused when it is
instantiated, with a pointer to "Migrating a 0.4 antenna" in the README.
"""

from ..antenna import Antenna

__all__ = ["Antenna"]
