"""``python -m ccexec``: see ccexec.cli."""

import sys

from .cli import main

sys.exit(main())
