"""Gradio tabs of Portrait Studio (Train, Generate, Identities): the same Blocks in the WebUI and standalone.

    backend = UiBackend(runner=JobRunner(...), generation=lambda: service)
    blocks = build_ui(backend)          # or webui_tabs(backend) from the WebUI's on_ui_tabs
"""

from portrait_core.adapters.ui.backend import (
    BUILTIN_TEMPLATES_DIR,
    UiBackend,
    WebUiHooks,
    default_template_dirs,
    webui_send_to_buttons,
)
from portrait_core.adapters.ui.blocks import build_ui, enable_queue, mount_standalone, webui_tabs

__all__ = ["BUILTIN_TEMPLATES_DIR", "UiBackend", "WebUiHooks", "build_ui", "default_template_dirs", "enable_queue",
           "mount_standalone", "webui_send_to_buttons", "webui_tabs"]
