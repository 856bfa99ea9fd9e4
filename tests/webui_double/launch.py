"""Double of the WebUI's `launch` module (launch.py re-exporting modules/launch_utils.py).

`run_pip` records the commands instead of running pip; like the real one it does nothing under
--skip-install. The real `args` come from parsing sys.argv (plus COMMANDLINE_ARGS) before any
extension's preload runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from modules import cmd_args
from modules.paths_internal import extensions_dir

args, _ = cmd_args.parser.parse_known_args()
python = sys.executable
index_url = os.environ.get("INDEX_URL", "")

pip_calls: list[tuple[str, str | None]] = []
"""(command, desc) of every run_pip call that would have run pip."""


def run_pip(command, desc=None, live=False):
    """Real signature: run_pip(command, desc=None, live=default_command_live). The real one runs
    `"{python}" -m pip {command} --prefer-binary` through a shell, printing "Installing {desc}",
    and raises RuntimeError when pip fails."""
    if args.skip_install:
        return None
    print(f"Installing {desc}")
    pip_calls.append((command, desc))
    return ""


def list_extensions(settings_file):
    """Folder names in extensions/, minus those disabled in the WebUI's config.json."""
    try:
        with open(settings_file, encoding="utf8") as file:
            settings = json.load(file)
    except FileNotFoundError:
        settings = {}
    disabled = set(settings.get("disabled_extensions", []))
    if (settings.get("disable_all_extensions", "none") != "none" or args.disable_extra_extensions
            or args.disable_all_extensions or not Path(extensions_dir).is_dir()):
        return []
    return [path.name for path in Path(extensions_dir).iterdir() if path.name not in disabled]
