"""``python -m aiotlink.arq list|replay|purge``."""

import sys

from aiotlink.arq._cli import main

sys.exit(main())
