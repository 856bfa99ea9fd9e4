"""Double of modules/script_callbacks.py: the real registration functions (same names, same
`(callback, *, name=None)` signatures, same callback_map keys) and the callers the UI start-up uses."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = "unnamed"


callback_map = {
    f"callbacks_{category}": []
    for category in (
        "app_started", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings", "before_image_saved",
        "image_saved", "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component",
        "after_component", "image_grid", "infotext_pasted", "script_unloaded", "before_ui", "on_reload",
        "list_optimizers", "list_unets", "before_token_counter",
    )
}


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    """As the real one: the callback is named after the registering file (found on the call stack)."""
    if filename is None:
        stack = [frame for frame in inspect.stack() if frame.filename != __file__]
        filename = stack[0].filename if stack else "unknown file"
    callback_name = f"{Path(filename).name}/{category}" + (f"/{name}" if name is not None else "")
    unique_name = callback_name
    for index in range(1000):
        if not any(existing.name == unique_name for existing in callbacks):
            break
        unique_name = f"{callback_name}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique_name))


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


# Registration function name -> callback category, as in the real module (each takes `(callback, *, name=None)`).
REGISTRATION_FUNCTIONS = {
    "on_app_started": "app_started", "on_before_reload": "on_reload", "on_model_loaded": "model_loaded",
    "on_ui_tabs": "ui_tabs", "on_ui_train_tabs": "ui_train_tabs", "on_ui_settings": "ui_settings",
    "on_before_image_saved": "before_image_saved", "on_image_saved": "image_saved",
    "on_extra_noise": "extra_noise", "on_cfg_denoiser": "cfg_denoiser", "on_cfg_denoised": "cfg_denoised",
    "on_cfg_after_cfg": "cfg_after_cfg", "on_before_component": "before_component",
    "on_after_component": "after_component", "on_image_grid": "image_grid",
    "on_infotext_pasted": "infotext_pasted", "on_script_unloaded": "script_unloaded",
    "on_before_ui": "before_ui", "on_list_optimizers": "list_optimizers", "on_list_unets": "list_unets",
    "on_before_token_counter": "before_token_counter",
}


def _registration_function(function_name, category):
    def register(callback, *, name=None):
        add_callback(callback_map[f"callbacks_{category}"], callback, name=name, category=category)

    register.__name__ = register.__qualname__ = function_name
    return register


for _function_name, _category in REGISTRATION_FUNCTIONS.items():
    globals()[_function_name] = _registration_function(_function_name, _category)


def registered(category):
    """The callbacks registered for a category (e.g. "ui_settings"), for assertions."""
    return list(callback_map[f"callbacks_{category}"])


def app_started_callback(demo, app):
    """Real signature: app_started_callback(demo: Optional[Blocks], app: FastAPI); demo is None under --nowebui."""
    for registered in callback_map["callbacks_app_started"]:
        registered.callback(demo, app)


def ui_tabs_callback():
    tabs = []
    for registered in callback_map["callbacks_ui_tabs"]:
        tabs += registered.callback() or []
    return tabs


def ui_settings_callback():
    """The real one reports a failing callback and goes on; the double lets the error reach the test."""
    for registered in callback_map["callbacks_ui_settings"]:
        registered.callback()
