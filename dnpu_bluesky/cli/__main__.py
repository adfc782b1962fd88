"""``python -m dnpu_bluesky.cli``."""

import sys

from . import main

sys.exit(main())
