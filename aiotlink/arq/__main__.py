"""``python -m aiotlink.arq list|replay``."""

import sys

from aiotlink.arq._cli import main

sys.exit(main())
