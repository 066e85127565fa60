"""``python -m sw_core.cli``: the ``sw`` command without its console script."""

import sys

from sw_core.cli import main

sys.exit(main())
