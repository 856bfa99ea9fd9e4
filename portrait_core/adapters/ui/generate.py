"""The Generate tab: identities (one per template face, left to right), a template from the gallery, an
upload or a batch, advanced parameters, and the results ranked by identity score with their infotext."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from pydantic import ValidationError

from portrait_core.adapters.ui.backend import UiBackend, log
from portrait_core.adapters.ui.files import UploadedFiles
from portrait_core.adapters.ui.forms import (
    FormError,
    build_params,
    error_html,
    info_html,
    model_widgets,
    validation_messages,
    widget_values,
)
from portrait_core.adapters.ui.images import load_image
from portrait_core.adapters.ui.train import Refusal, read_uploads
from portrait_core.errors import GenerationInterrupted, PortraitError, UnusablePhotoError
from portrait_core.params import GenerateParams
from portrait_core.services.uploads import MAX_TEMPLATES, PHOTO_EXTENSIONS

MAX_FACES = 4
NO_FACE = "(none)"
UPLOAD_NAME = re.compile(r"[\w][\w .()+,-]{0,99}")  # a plain file name, shown in captions and infotext

# Browser side (run by Gradio's _js; no page script needed, so the same in the WebUI and standalone).
# The image input hands the server pixels only: the picked or dropped file's name is kept on the page
# and sent with the click. A pasted image has no name.
REMEMBER_UPLOAD_NAME_JS = """() => {
    const app = typeof gradioApp === "function" ? gradioApp() : document;
    const box = app.querySelector("#portrait-generate-upload");
    if (!box || box.dataset.portraitNames) { return []; }
    box.dataset.portraitNames = "1";
    const remember = (files) => { window.portraitStudioUploadName = files && files.length ? files[0].name : ""; };
    box.addEventListener("change", (event) => { if (event.target.files) { remember(event.target.files); } }, true);
    box.addEventListener("drop", (event) => remember(event.dataTransfer && event.dataTransfer.files), true);
    box.addEventListener("paste", () => remember(null), true);
    return [];
}"""
# Inside the WebUI: a task id the WebUI's own progress bar polls (/internal/progress), as its txt2img does.
SUBMIT_JS = """(...args) => {
    const app = typeof gradioApp === "function" ? gradioApp() : document;
    const results = app.querySelector("#portrait-results_gallery");
    if (typeof requestProgress === "function" && typeof randomId === "function" && results) {
        args[0] = randomId();
        requestProgress(args[0], results, results, () => {});
    }
    args[1] = window.portraitStudioUploadName || "";
    return args;
}"""
FROM_GALLERY, FROM_UPLOAD, FROM_BATCH = "Template gallery", "Upload one", "Batch upload"
MAX_GALLERY_TEMPLATES = 200


@dataclass
class GenerateTab:
    tab: gr.Tab
    faces: list
    refresh_identities: gr.Button
    source: gr.State  # which template sub-tab is in view
    template_gallery: gr.Gallery
    template_paths: gr.State
    selected_template: gr.State
    selected_label: gr.HTML
    refresh_templates: gr.Button
    upload: gr.Image
    batch: UploadedFiles
    advanced: dict
    generate: gr.Button
    interrupt: gr.Button
    message: gr.HTML
    results: gr.Gallery
    infotext: gr.Textbox
    infotexts: gr.State
    task_id: gr.Textbox
    upload_name: gr.Textbox
    handlers: GenerateHandlers | None = None


# -- layout ---------------------------------------------------------------------------------------------

def build_generate_tab(backend: UiBackend) -> GenerateTab:
    with gr.Tab("Generate", id="generate", elem_id="portrait-tab-generate") as tab, gr.Row(equal_height=False):
        with gr.Column(elem_classes=["portrait-panel"]):
            form = {**_identity_pickers(backend), **_template_sources(backend)}
            with gr.Accordion("Advanced parameters", open=False, elem_id="portrait-generate-advanced"):
                form["advanced"] = model_widgets(GenerateParams, id_prefix="generate",
                                                 exclude=("identities", "face_order"),
                                                 initial=backend.initial_values.get("generate"))
                if backend.in_webui:  # the WebUI's own sampler list (asking the WebUIHost loads nothing)
                    sampler = form["advanced"]["sampler"]
                    sampler.choices = [name for name in sampler.choices if name in backend.services.host().samplers()]
            with gr.Row():
                form["generate"] = gr.Button("Generate", variant="primary", elem_id="portrait-generate-start",
                                             elem_classes=["portrait-submit"])
                form["interrupt"] = gr.Button("Interrupt", elem_id="portrait-generate-interrupt")
            form["message"] = gr.HTML(elem_id="portrait-generate-message")
            form["task_id"] = gr.Textbox(visible=False, elem_id="portrait-generate-task-id")
            form["upload_name"] = gr.Textbox(visible=False, elem_id="portrait-generate-upload-name")
        with gr.Column():
            form.update(_results_panel(backend))
    widgets = GenerateTab(tab=tab, **form)
    widgets.handlers = GenerateHandlers(backend, widgets)
    _connect_generate_events(widgets)
    return widgets


def _identity_pickers(backend: UiBackend) -> dict:
    ids = backend.services.identities.prepared_ids()
    faces = []
    with gr.Row():
        for index in range(MAX_FACES):
            leftmost = index == 0  # the one face every portrait needs; the others are optional
            faces.append(gr.Dropdown(choices=ids if leftmost else [NO_FACE, *ids],
                                     value=(ids[0] if ids else None) if leftmost else NO_FACE,
                                     label=f"Face {index + 1}" + (" (leftmost)" if leftmost else ""),
                                     elem_id=f"portrait-generate-face-{index + 1}", min_width=120))
        refresh = gr.Button("↻", elem_id="portrait-generate-refresh-identities", elem_classes=["portrait-tool"],
                            min_width=40, scale=0)
    return {"faces": faces, "refresh_identities": refresh}


def _template_sources(backend: UiBackend) -> dict:
    """Three template sources, one sub-tab each; the tab in view is the source Generate uses."""
    paths = [str(path) for path in list_templates(backend.template_dirs())]
    source = gr.State(FROM_GALLERY)
    with gr.Tabs(elem_id="portrait-generate-template-tabs"):
        with gr.Tab(FROM_GALLERY, id="gallery", elem_id="portrait-generate-gallery-tab") as gallery_tab:
            gallery = gr.Gallery(value=_gallery_items(paths), label="Templates (click one)", columns=4, height=320,
                                 allow_preview=False, elem_id="portrait-template-gallery")
            with gr.Row():
                selected_label = gr.HTML(elem_id="portrait-generate-selected-template")
                refresh = gr.Button("↻ Refresh", elem_id="portrait-generate-refresh-templates", size="sm", scale=0)
        with gr.Tab(FROM_UPLOAD, id="upload", elem_id="portrait-generate-upload-tab") as upload_tab:
            upload = gr.Image(type="pil", label="Template photo", elem_id="portrait-generate-upload")
        with gr.Tab(FROM_BATCH, id="batch", elem_id="portrait-generate-batch-tab") as batch_tab:
            batch = UploadedFiles(file_count="multiple", file_types=["image"], label=f"Template photos (up to "
                                  f"{MAX_TEMPLATES})", elem_id="portrait-generate-batch-files")
    upload_tab.select(None, _js=REMEMBER_UPLOAD_NAME_JS)
    for tab, name in ((gallery_tab, FROM_GALLERY), (upload_tab, FROM_UPLOAD), (batch_tab, FROM_BATCH)):
        tab.select(_constant(name), outputs=[source], queue=False)
    return {"source": source, "template_gallery": gallery, "template_paths": gr.State(paths),
            "selected_template": gr.State(None), "selected_label": selected_label, "refresh_templates": refresh,
            "upload": upload, "batch": batch}


def _constant(value):
    def constant():
        return value

    return constant


def _results_panel(backend: UiBackend) -> dict:
    # The id ends in "_gallery": the WebUI's send-to script finds the selected image of galleries named so.
    results = gr.Gallery(label="Results, best identity score first", columns=2, height=480,
                         elem_id="portrait-results_gallery")
    infotext = gr.Textbox(label="Infotext", lines=4, interactive=False, elem_id="portrait-generate-infotext")
    if backend.webui is not None and backend.webui.send_to_buttons is not None:
        with gr.Row(elem_id="portrait-generate-send-to"):
            backend.webui.send_to_buttons(results, infotext)
    return {"results": results, "infotext": infotext, "infotexts": gr.State([])}


def _connect_generate_events(w: GenerateTab) -> None:
    handlers = w.handlers
    # A list, not a set: the page's script fills the first two values (task id, uploaded file's name).
    w.generate.click(handlers.generate_from_page, _js=SUBMIT_JS,
                     inputs=[w.task_id, w.upload_name, *handlers.form_order],
                     outputs=[w.results, w.infotext, w.infotexts, w.message])
    w.interrupt.click(handlers.interrupt, outputs=[w.message], queue=False)
    w.results.select(handlers.show_infotext, inputs=[w.infotexts], outputs=[w.infotext])
    w.template_gallery.select(handlers.pick_template, inputs=[w.template_paths],
                              outputs=[w.selected_template, w.selected_label])
    w.refresh_templates.click(handlers.refresh_templates, outputs=[w.template_gallery, w.template_paths,
                                                                   w.selected_template, w.selected_label])
    for trigger in (w.refresh_identities.click, w.tab.select):
        trigger(handlers.refresh_identities, inputs=set(w.faces), outputs=w.faces)


# -- handlers -------------------------------------------------------------------------------------------

class GenerateHandlers:
    """What the Generate tab's events call; each returns updates keyed by component and never raises."""

    def __init__(self, backend: UiBackend, widgets: GenerateTab):
        self.backend, self.w = backend, widgets
        w = widgets  # the form's fields in the order Generate sends them, after the task id and upload name
        self.form_order = [*w.faces, w.source, w.selected_template, w.upload, w.batch, *w.advanced.values()]
        self._running = 0  # generations under way, from every page: Interrupt only asks the host then
        self._running_lock = threading.Lock()

    def generate_from_page(self, task_id: str, upload_name: str, *values) -> dict:
        return self.generate(dict(zip(self.form_order, values, strict=True)), task_id=task_id,
                             upload_name=upload_name)

    def generate(self, form: dict, *, task_id: str = "", upload_name: str = "") -> dict:
        w = self.w
        try:
            params = self._params(form)
            templates = self._templates(form, upload_name)
            job = task_id if isinstance(task_id, str) and task_id.startswith("task(") else "Portrait Studio"
            with self._counted(), self.backend.generation_context(job[:80]):
                outputs = self.backend.generation().generate(params, templates)
        except Refusal as refusal:
            return {w.message: error_html(refusal.lines, "Nothing generated")}
        except GenerationInterrupted as error:
            return {w.message: info_html(f"Interrupted ({error}).")}
        except PortraitError as error:
            return {w.message: error_html(str(error), "Nothing generated")}
        ranked = sorted(outputs, key=lambda output: output[0].score, reverse=True)
        log.info("UI: generated %d portraits of %s", len(ranked), ", ".join(params.identities))
        texts = [text for _, text in ranked]
        return {w.results: [(_with_infotext(result.image, text), result_caption(result)) for result, text in ranked],
                w.infotext: texts[0] if texts else "", w.infotexts: texts,
                w.message: info_html(_summary(ranked))}

    def interrupt(self) -> dict:
        if not self._running:
            return {self.w.message: info_html("Nothing is being generated.")}
        self.backend.interrupt_generation()
        return {self.w.message: info_html("Interrupting after the current step…")}

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        with self._running_lock:
            self._running += 1
        try:
            yield
        finally:
            with self._running_lock:
                self._running -= 1

    def show_infotext(self, texts: list[str], event: gr.SelectData) -> dict:
        index = event.index if isinstance(event.index, int) else 0
        return {self.w.infotext: texts[index] if 0 <= index < len(texts) else ""}

    def pick_template(self, paths: list[str], event: gr.SelectData) -> dict:
        index = event.index if isinstance(event.index, int) else -1
        if not 0 <= index < len(paths):
            return {self.w.selected_template: None, self.w.selected_label: ""}
        return {self.w.selected_template: paths[index],
                self.w.selected_label: info_html(f"Template: {Path(paths[index]).name}")}

    def refresh_templates(self) -> dict:
        paths = [str(path) for path in list_templates(self.backend.template_dirs())]
        return {self.w.template_gallery: _gallery_items(paths), self.w.template_paths: paths,
                self.w.selected_template: None, self.w.selected_label: ""}

    def refresh_identities(self, current: dict) -> dict:
        ids = self.backend.services.identities.prepared_ids()
        updates = {}
        for index, face in enumerate(self.w.faces):
            choices = ids if index == 0 else [NO_FACE, *ids]
            value = current.get(face)
            if value not in choices:
                value = choices[0] if choices else None
            updates[face] = gr.update(choices=choices, value=value)
        return updates

    # ---- steps ---------------------------------------------------------------------------------------
    def _params(self, form: dict) -> GenerateParams:
        picked = [(index, form[face]) for index, face in enumerate(self.w.faces)
                  if form[face] and form[face] != NO_FACE]
        if not picked:
            raise Refusal("Face 1 (identities): choose the identity to render (train one in the Train tab first)")
        identities = [identity for _, identity in picked]
        order = [index for index, _ in picked]
        face_order = None if order == list(range(len(order))) else order
        try:
            return build_params(GenerateParams, widget_values(self.w.advanced, form), identities=identities,
                                face_order=face_order)
        except (ValidationError, FormError) as error:
            raise Refusal(validation_messages(error, GenerateParams)) from error

    def _templates(self, form: dict, upload_name: str = "") -> list[tuple[str, object]]:
        source = form[self.w.source]
        try:
            if source == FROM_UPLOAD:
                return _uploaded_template(form[self.w.upload], upload_name)
            if source == FROM_BATCH:
                return _batch_templates(form[self.w.batch])
            return _gallery_template(form[self.w.selected_template])
        except UnusablePhotoError as error:
            raise Refusal(f"Template: {error}") from error
        except FormError as error:
            raise Refusal(f"Templates: {error}") from error


def _uploaded_template(image, name: str = "") -> list[tuple[str, object]]:
    """The uploaded photo under the name of its file on the user's disk (a name only, never a path here;
    "upload.png" for a pasted image or a name that is not a plain file name)."""
    if image is None:
        raise Refusal("Template: upload a photo first (or pick another template source)")
    name = name.replace("\\", "/").rsplit("/", 1)[-1] if isinstance(name, str) else ""
    return [(name if UPLOAD_NAME.fullmatch(name) else "upload.png", image.convert("RGB"))]


def _batch_templates(files) -> list[tuple[str, object]]:
    uploads = read_uploads(files)
    if not uploads:
        raise Refusal("Templates: upload one or more photos first (or pick another template source)")
    if len(uploads) > MAX_TEMPLATES:
        raise Refusal(f"Templates: {len(uploads)} uploaded; at most {MAX_TEMPLATES} at a time")
    return [(upload.file, load_image(upload.path)) for upload in uploads]


def _gallery_template(path: str | None) -> list[tuple[str, object]]:
    if not path:
        raise Refusal("Template: click a template in the gallery first (or pick another template source)")
    return [(Path(path).name, load_image(Path(path)))]


# -- views and listings ---------------------------------------------------------------------------------

def list_templates(folders) -> list[Path]:
    """Picture files directly inside each folder (hidden files skipped), folder by folder, sorted by name."""
    found: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        pictures = sorted(path for path in folder.iterdir()
                          if path.is_file() and not path.name.startswith(".")
                          and path.suffix.lower() in PHOTO_EXTENSIONS)
        found.extend(pictures)
    return found[:MAX_GALLERY_TEMPLATES]


def _gallery_items(paths: list[str]) -> list[tuple[str, str]]:
    return [(path, Path(path).stem) for path in paths]


def result_caption(result) -> str:
    """The score first (what the ranking is by), then each face's own score, template and seed."""
    faces = ", ".join(f"{face.identity} {'no face' if face.identity_score is None else f'{face.identity_score:.3f}'}"
                      for face in result.faces)
    return f"score {result.score:.3f} · {faces} · {result.template} · seed {result.seed}"


def _with_infotext(image, text: str):
    """A copy that carries its infotext, so the WebUI's PNG Info and send-to read it from the file."""
    tagged = image.copy()
    tagged.info["parameters"] = text
    return tagged


def _summary(ranked: list) -> str:
    if not ranked:
        return "No portrait was made."
    notes = sorted({note for result, _ in ranked for note in result.notes})
    best = ranked[0][0]
    if best.faces and all(face.identity_score is None for face in best.faces):
        score = "no face found in the result to score"  # the API says null; 0.000 would read as a bad likeness
    else:
        score = f"best identity score {best.score:.3f}"
    text = f"{len(ranked)} portrait(s); {score}."
    return text + (" Notes: " + "; ".join(notes) if notes else "")
