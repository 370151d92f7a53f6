"""``python -m bmserver``: the same command line as ``bmserver``."""

import sys

from bmserver._cli import main

sys.exit(main())
