"""Double of modules/scripts.py: load_scripts() imports every extension's scripts/*.py the way the
WebUI does — the extension folder first on sys.path while the file runs, sys.path restored after."""

from __future__ import annotations

import sys
from collections import namedtuple
from pathlib import Path

from modules import paths_internal, script_callbacks, script_loading

ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
current_basedir = paths_internal.script_path
loaded_modules = {}
"""path -> module of every script imported by load_scripts (the real one keeps Script classes instead)."""


def basedir():
    """The folder of the extension whose script is being imported; valid only during that import."""
    return current_basedir


def list_extension_scripts():
    """scripts/*.py of every extension folder, folders and files in sorted order (all str, as the real ones)."""
    extensions_dir = Path(paths_internal.extensions_dir)
    if not extensions_dir.is_dir():
        return []
    return [ScriptFile(str(extension), path.name, str(path))
            for extension in sorted(extensions_dir.iterdir())
            for path in sorted((extension / "scripts").glob("*"))
            if path.suffix.lower() == ".py" and path.is_file()]


def load_scripts():
    """The real one reports a script that fails to import and goes on; the double raises."""
    global current_basedir  # noqa: PLW0603 - mirrors the real module's global
    loaded_modules.clear()
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for scriptfile in list_extension_scripts():
        try:
            if scriptfile.basedir != paths_internal.script_path:
                sys.path = [scriptfile.basedir, *sys.path]
            current_basedir = scriptfile.basedir
            loaded_modules[scriptfile.path] = script_loading.load_module(scriptfile.path)
        finally:
            sys.path = syspath
            current_basedir = paths_internal.script_path
