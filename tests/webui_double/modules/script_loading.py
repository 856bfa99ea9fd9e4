"""Double of modules/script_loading.py: how the WebUI imports an extension's files by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

loaded_scripts = {}


def load_module(path):
    """As the real one: the module is named after the file name (with ".py") and is not put in sys.modules."""
    module_spec = importlib.util.spec_from_file_location(Path(path).name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    loaded_scripts[path] = module
    return module


def preload_extensions(extensions_dir, parser, extension_list=None):
    """Runs `preload(parser)` of every extension's preload.py, in sorted folder order. The real one
    reports (and survives) an exception; the double lets it propagate so a test sees it."""
    if not Path(extensions_dir).is_dir():
        return
    names = extension_list if extension_list is not None else [p.name for p in Path(extensions_dir).iterdir()]
    for dirname in sorted(names):
        preload_script = Path(extensions_dir) / dirname / "preload.py"
        if not preload_script.is_file():
            continue
        module = load_module(str(preload_script))
        if hasattr(module, "preload"):
            module.preload(parser)
