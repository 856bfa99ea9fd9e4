"""Entry point for `python -m portrait_core`."""

import sys

from portrait_core.adapters.cli.main import main

sys.exit(main())
