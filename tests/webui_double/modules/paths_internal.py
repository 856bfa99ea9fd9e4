"""Double of modules/paths_internal.py: folders derived from --data-dir / --models-dir, parsed early.

Like the real module, every path here is a str.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

# As in the real module: COMMANDLINE_ARGS from the environment joins the command line.
sys.argv += shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))

modules_path = str(Path(__file__).resolve().parent)
script_path = str(Path(modules_path).parent)

_parser_pre = argparse.ArgumentParser(add_help=False)
_parser_pre.add_argument("--data-dir", type=str, default=script_path)
_parser_pre.add_argument("--models-dir", type=str, default=None)
_cmd_opts_pre = _parser_pre.parse_known_args()[0]

data_path = _cmd_opts_pre.data_dir
models_path = _cmd_opts_pre.models_dir or str(Path(data_path) / "models")
extensions_dir = str(Path(data_path) / "extensions")
extensions_builtin_dir = str(Path(script_path) / "extensions-builtin")


def normalized_filepath(filepath):
    return str(Path(filepath).absolute())
