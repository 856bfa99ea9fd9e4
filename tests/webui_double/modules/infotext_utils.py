"""Double of modules/infotext_utils.py (A1111 1.7+): the "Send to ..." paste-parameter bindings.

Real: `ParamBinding(paste_button, tabname, source_text_component=None, source_image_component=None,
source_tabname=None, override_settings_component=None, paste_field_names=None)` and
`register_paste_params_button(binding)` appending to `registered_param_bindings`, which the WebUI
connects after every tab is built."""

from __future__ import annotations

registered_param_bindings: list = []


class ParamBinding:
    def __init__(self, paste_button, tabname, source_text_component=None, source_image_component=None,
                 source_tabname=None, override_settings_component=None, paste_field_names=None):
        self.paste_button = paste_button
        self.tabname = tabname
        self.source_text_component = source_text_component
        self.source_image_component = source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = paste_field_names or []


def register_paste_params_button(binding: ParamBinding) -> None:
    registered_param_bindings.append(binding)
