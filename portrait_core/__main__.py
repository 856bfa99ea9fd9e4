"""Entry point for `python -m portrait_core`."""

import sys

from portrait_core.cli import main

sys.exit(main())
