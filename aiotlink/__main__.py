"""``python -m aiotlink demo``: see ``aiotlink._cli``."""

import sys

from ._cli import main

sys.exit(main())
