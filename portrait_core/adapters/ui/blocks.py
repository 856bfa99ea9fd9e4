"""The Portrait Studio tabs as one gr.Blocks: in the WebUI (`webui_tabs`) and standalone (`mount_standalone`)."""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from portrait_core.adapters.ui.backend import UiBackend
from portrait_core.adapters.ui.generate import build_generate_tab
from portrait_core.adapters.ui.identities import IdentitiesTab, build_identities_tab
from portrait_core.adapters.ui.login import Check, put_behind_login
from portrait_core.adapters.ui.train import TrainTab, build_train_tab
from portrait_core.adapters.ui.workflows import build_workflows_tab

ROOT_ELEMENT_ID = "portrait-studio"
WEBUI_TAB = ("Portrait Studio", "portrait_studio")
STYLE_SHEET = Path(__file__).resolve().parents[3] / "style.css"
STANDALONE_WORKERS = 4  # a training's progress watcher holds one while Generate and the rest go on


def build_ui(backend: UiBackend, *, css: str | None = None) -> gr.Blocks:
    """The Train, Generate, Identities and Workflows tabs on `backend`. `css` only matters standalone: the WebUI loads
    the extension's style.css itself."""
    with gr.Blocks(analytics_enabled=False, title="Portrait Studio", css=css) as blocks:
        with gr.Tabs(elem_id=ROOT_ELEMENT_ID, elem_classes=["portrait-studio"]) as tabs:
            train = build_train_tab(backend)
            build_generate_tab(backend)
            identities = build_identities_tab(backend)
            build_workflows_tab(backend)
        _connect_retrain(tabs, train, identities)
    return blocks


def _connect_retrain(tabs: gr.Tabs, train: TrainTab, identities: IdentitiesTab) -> None:
    """Identities → Re-train: the Train tab, filled in for that identity, comes to the front."""

    def prefill(identity: str | None) -> dict:
        return {**train.handlers.prefill(identity), tabs: gr.update(selected="train")}

    identities.retrain.click(prefill, inputs=[identities.selected],
                             outputs=[tabs, train.identity, train.photos, train.report, train.message])


def webui_tabs(backend: UiBackend) -> list[tuple[gr.Blocks, str, str]]:
    """What the WebUI's `on_ui_tabs` callback returns: [(blocks, title, id)]."""
    return [(build_ui(backend), *WEBUI_TAB)]


@dataclass(frozen=True)
class MountedUi:
    blocks: gr.Blocks
    upload_folder: Path  # where Gradio keeps this page's uploads


def mount_standalone(app, services, *, path: str = "/", login: Check | None = None,
                     **backend_options) -> MountedUi:
    """Serve the tabs at `path` of a FastAPI app (the standalone `serve`), on the same services as its HTTP
    API; with `login` (user, password -> bool), behind a login on every route. Uploads go to a private folder
    removed when the app stops. `backend_options` are further UiBackend fields (e.g. `template_dirs=`)."""
    backend = UiBackend(services, **backend_options)
    css = STYLE_SHEET.read_text(encoding="utf-8") if STYLE_SHEET.is_file() else None
    with private_upload_folder(app) as upload_folder:
        blocks = build_ui(backend, css=css)
        enable_queue(blocks)
        if login is not None:
            blocks.auth, blocks.auth_message = login, "Portrait Studio: the user name and password of --api-auth"
        mounted = len(app.routes)
        gr.mount_gradio_app(app, blocks, path=path)
    if login is not None:
        put_behind_login(app, app.routes[mounted].app)
    return MountedUi(blocks, upload_folder)


@contextlib.contextmanager
def private_upload_folder(app):
    """While the components and the Gradio app are made, GRADIO_TEMP_DIR names a new folder only this user
    can read (0700), removed at the app's shutdown; a GRADIO_TEMP_DIR the user set is kept as it is."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        yield Path(os.environ["GRADIO_TEMP_DIR"])
        return
    folder = tempfile.mkdtemp(prefix="portrait-studio-uploads-")
    app.add_event_handler("shutdown", lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ["GRADIO_TEMP_DIR"] = folder
    try:
        yield Path(folder)
    finally:
        os.environ.pop("GRADIO_TEMP_DIR", None)


def enable_queue(blocks: gr.Blocks, workers: int = STANDALONE_WORKERS) -> gr.Blocks:
    """Progress watching and Interrupt need Gradio's queue, with more than Gradio 3's single worker."""
    parameters = inspect.signature(blocks.queue).parameters
    if "concurrency_count" in parameters:  # Gradio 3
        return blocks.queue(concurrency_count=workers)
    return blocks.queue(default_concurrency_limit=workers)  # Gradio 4
