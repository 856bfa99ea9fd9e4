"""Portrait Studio's command-line flags, added to the WebUI's parser before it parses its arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def absolute_path(value: str) -> str:
    """A folder given on the command line, made absolute against the WebUI's working folder."""
    return str(Path(value).expanduser().absolute())


def preload(parser: argparse.ArgumentParser) -> None:
    """Add the --portrait-* flags; the WebUI calls this before it builds cmd_opts."""
    group = parser.add_argument_group("Portrait Studio")
    group.add_argument(
        "--portrait-models-dir", type=absolute_path, default=None, metavar="DIR",
        help="Portrait Studio: folder for its model files (default: the WebUI's models/PortraitStudio)",
    )
    group.add_argument(
        "--portrait-offline", action="store_true", default=False,
        help="Portrait Studio: never download models; use only what is on disk",
    )
    group.add_argument(
        # str.upper first, so that "debug" is accepted as well as "DEBUG"
        "--portrait-loglevel", type=str.upper, choices=LOG_LEVELS, default="INFO",
        help="Portrait Studio: log level of the `portrait` logger (default: INFO)",
    )
