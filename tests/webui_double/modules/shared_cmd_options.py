"""Double of modules/shared_cmd_options.py: extension preloads add their flags, then sys.argv is parsed."""

from __future__ import annotations

import os

import launch
from modules import cmd_args, script_loading
from modules.paths_internal import extensions_builtin_dir, extensions_dir

parser = cmd_args.parser

script_loading.preload_extensions(extensions_dir, parser,
                                  extension_list=launch.list_extensions(launch.args.ui_settings_file))
script_loading.preload_extensions(extensions_builtin_dir, parser)

if os.environ.get("IGNORE_CMD_ARGS_ERRORS", None) is None:
    cmd_opts = parser.parse_args()
else:
    cmd_opts, _ = parser.parse_known_args()
