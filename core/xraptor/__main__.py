"""``python -m xraptor``: the same as the ``xraptor`` command."""

import sys

from .cli import main

sys.exit(main())
