"""Run the fake as a process: ``python -m aiotlink.testing --port 8080``."""

import sys

from aiotlink.testing._process import main

if __name__ == "__main__":
    sys.exit(main())
