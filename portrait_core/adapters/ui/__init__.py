"""Gradio tabs of Portrait Studio (Train, Generate, Identities): the same Blocks in the WebUI and standalone.

    backend = UiBackend(services)       # the process's PortraitServices, shared with the HTTP routes
    blocks = build_ui(backend)          # or webui_tabs(backend) from the WebUI's on_ui_tabs
"""

from portrait_core.adapters.ui.backend import (
    BUILTIN_TEMPLATES_DIR,
    UiBackend,
    WebUiHooks,
    webui_send_to_buttons,
)
from portrait_core.adapters.ui.blocks import build_ui, enable_queue, mount_standalone, webui_tabs

__all__ = ["BUILTIN_TEMPLATES_DIR", "UiBackend", "WebUiHooks", "build_ui", "enable_queue",
           "mount_standalone", "webui_send_to_buttons", "webui_tabs"]
