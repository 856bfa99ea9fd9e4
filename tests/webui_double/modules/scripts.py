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


# ---- generation-time scripts: Script, ScriptRunner, scripts_txt2img / scripts_img2img -----------------
# The real ScriptRunner builds gradio components in setup_ui(); the double's scripts return UiValue
# stand-ins (a label and a value) so that a runner can be set up without a Blocks context. args_from /
# args_to, `controls`, `inputs`, the order of calls and the error handling are the real ones.

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []
"""Script classes found at start (built-in first); initialize_scripts() instantiates them."""


class UiValue:
    """Stand-in for a gradio input component: what init_default_script_args() reads is `.value`."""

    def __init__(self, value=None, label=""):
        self.value = value
        self.label = label


class AlwaysVisible:
    pass


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    controls = None
    setup_for_ui_only = False
    """When True, setup() runs only for UI calls: not when p.is_api is True."""

    def title(self):
        raise NotImplementedError

    def ui(self, is_img2img):
        return None

    def show(self, is_img2img):
        return True

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass


class ScriptBuiltinUI(Script):
    setup_for_ui_only = True


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.title_map = {}
        self.inputs = [None]

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        controls = script.ui(script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = script.title().lower()
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui(self):
        """The always-on scripts' inputs first, then the "Script" dropdown at position 0, then the
        selectable scripts' inputs, as the real setup_ui() orders them."""
        self.inputs = [None]
        self.title_map = {script.title().lower(): script for script in self.scripts}
        for script in self.alwayson_scripts:
            self.create_script_ui(script)
        self.inputs[0] = UiValue("None", "Script")
        for script in self.selectable_scripts:
            self.create_script_ui(script)

    def _run(self, what, p, *extra):
        """Every hook like the real one: an exception is reported and the next script runs."""
        from modules import errors

        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, what)(p, *extra, *script_args)
            except Exception:
                errors.report(f"Error running {what}: {script.filename}", exc_info=True)

    def setup_scrips(self, p, *, is_ui=True):
        from modules import errors

        for script in self.alwayson_scripts:
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                script.setup(p, *script_args)
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._run("before_process", p)

    def process(self, p):
        self._run("process", p)

    def postprocess_image(self, p, pp):
        self._run("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._run("postprocess", p, processed)


scripts_txt2img: ScriptRunner = None
scripts_img2img: ScriptRunner = None


def create_script_runners():
    """What the WebUI's start-up and create_ui() do for the two generation tabs."""
    global scripts_txt2img, scripts_img2img
    scripts_txt2img, scripts_img2img = ScriptRunner(), ScriptRunner()
    for runner, is_img2img in ((scripts_txt2img, False), (scripts_img2img, True)):
        runner.initialize_scripts(is_img2img)
        runner.setup_ui()
