"""Double of modules/ui_settings.py: how the Settings page turns an OptionInfo into a gradio component."""

from __future__ import annotations

import gradio as gr

from modules import shared


def create_setting_component(key, is_quicksettings=False):
    """As the real one: the option's component, else one chosen by the default's type — str, int or
    bool; any other type (a float without a component) is an error that breaks the Settings page."""
    opts = shared.opts
    info = opts.data_labels[key]
    value = opts.data.get(key, info.default)
    default_type = type(info.default)
    args = info.component_args() if callable(info.component_args) else info.component_args
    if info.component is not None:
        component = info.component
    elif default_type is str:
        component = gr.Textbox
    elif default_type is int:
        component = gr.Number
    elif default_type is bool:
        component = gr.Checkbox
    else:
        raise Exception(f"bad options item type: {default_type} for key {key}")
    return component(label=info.label, value=value, elem_id=f"setting_{key}", **(args or {}))
