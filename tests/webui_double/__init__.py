"""A test double of the Automatic1111 WebUI (1.10.1): its `modules` package and its `launch` module.

Only what Portrait Studio touches is here, with the real names, signatures and defaults (read from
A1111 1.10.1). `webui_started()` puts the double first on sys.path, lays out a WebUI data folder with
this repository as an installed extension, and runs the start-up steps the extension sees: preload,
argument parsing, settings load, script import.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DOUBLE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = DOUBLE_ROOT.parents[1]
EXTENSION_DIRNAME = "portrait-studio"
# Top-level names the double provides. portrait_core is left alone: the WebUI imports it once per
# process, and pydantic 1 refuses to define the same validators twice.
DOUBLE_MODULES = ("modules", "launch", "internal_controlnet", "networks")


def _forget_modules(prefixes: tuple[str, ...]) -> dict[str, object]:
    removed = {}
    for name in list(sys.modules):
        if name.split(".")[0] in prefixes:
            removed[name] = sys.modules.pop(name)
    return removed


@contextmanager
def double_on_path(argv: Sequence[str], environ: dict[str, str] | None = None) -> Iterator[None]:
    """`import modules` / `import launch` resolve to a fresh double, with this process's command line
    set to `argv` (the WebUI parses sys.argv); everything is put back afterwards."""
    saved_path, saved_argv, saved_environ = list(sys.path), list(sys.argv), dict(os.environ)
    saved_modules = _forget_modules(DOUBLE_MODULES)
    sys.path.insert(0, str(DOUBLE_ROOT))
    sys.argv = ["launch.py", *argv]
    os.environ.update(environ or {})
    try:
        yield
    finally:
        _forget_modules(DOUBLE_MODULES)
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_environ)


def make_webui_dir(data_dir: Path, saved_settings: dict | None = None) -> Path:
    """A WebUI data folder with this repository installed as `extensions/portrait-studio`."""
    extensions = data_dir / "extensions"
    extensions.mkdir(parents=True, exist_ok=True)
    link = extensions / EXTENSION_DIRNAME
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    (data_dir / "models").mkdir(exist_ok=True)
    if saved_settings is not None:
        (data_dir / "config.json").write_text(json.dumps(saved_settings), encoding="utf-8")
    return data_dir


@contextmanager
def webui_started(data_dir: Path, argv: Sequence[str] = (), *, saved_settings: dict | None = None,
                  environ: dict[str, str] | None = None) -> Iterator[dict]:
    """Start the double the way webui.py starts: preload + parse (importing `modules.shared`),
    settings loaded from config.json, then every extension script imported by `load_scripts()`.
    Yields the double's modules by name."""
    make_webui_dir(data_dir, saved_settings)
    with double_on_path(["--data-dir", str(data_dir), *argv], environ):
        from modules import script_callbacks, scripts, sd_models, shared, shared_init

        shared_init.initialize()
        sd_models.list_models()
        import networks  # the built-in Lora extension, which the real WebUI loads with the other scripts

        networks.list_available_networks()
        scripts.load_scripts()
        yield {"shared": shared, "script_callbacks": script_callbacks, "scripts": scripts}
