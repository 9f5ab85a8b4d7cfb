"""``python -m bluesky_tomogan``: the ``bluesky-tomogan`` command line, where no console script is on the path."""

import sys

from .cli import main

sys.exit(main())
