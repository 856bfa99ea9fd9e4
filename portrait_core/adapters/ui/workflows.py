"""The Workflows tab: pose transfer and image prompt + pose as ready presets (editable JSON), two input
images, and every step's output shown with its infotext."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr
from pydantic import ValidationError

from portrait_core.adapters.ui.backend import UiBackend, log
from portrait_core.adapters.ui.forms import error_html, info_html
from portrait_core.errors import PortraitError
from portrait_core.params import WorkflowParams

POSE_IMAGE, LOOK_IMAGE = "pose.png", "look.png"
PRESETS = {
    "Pose transfer": {"steps": [
        {"op": "pose_transfer", "pose_image": POSE_IMAGE, "prompt": "a person on a beach at sunset, photo",
         "controlnet_scale": 0.6, "steps": 30, "seed": -1},
        {"op": "restore", "codeformer_weight": 0.7},
        {"op": "upscale", "scale": 2}]},
    "Image prompt + pose": {"steps": [
        {"op": "image_prompt_pose", "ip_image": LOOK_IMAGE, "pose_image": POSE_IMAGE, "prompt": "a photo",
         "ip_adapter_scale": 0.6, "controlnet_scale": 0.6, "steps": 30, "seed": -1},
        {"op": "restore", "codeformer_weight": 0.7}]},
}


@dataclass
class WorkflowsTab:
    tab: gr.Tab
    preset: gr.Dropdown
    workflow: gr.Code
    pose: gr.Image
    look: gr.Image
    run: gr.Button
    message: gr.HTML
    results: gr.Gallery
    infotext: gr.Textbox


def build_workflows_tab(backend: UiBackend) -> WorkflowsTab:
    first = next(iter(PRESETS))
    with gr.Tab("Workflows", id="workflows", elem_id="portrait-tab-workflows") as tab, gr.Row(equal_height=False):
        with gr.Column(elem_classes=["portrait-panel"]):
            preset = gr.Dropdown(list(PRESETS), value=first, label="Preset", elem_id="portrait-workflow-preset")
            workflow = gr.Code(json.dumps(PRESETS[first], indent=2), language="json", label="Workflow (JSON)",
                               elem_id="portrait-workflow-json")
            with gr.Row():
                pose = gr.Image(type="pil", label=f"Pose image ({POSE_IMAGE})", elem_id="portrait-workflow-pose")
                look = gr.Image(type="pil", label=f"Look / image prompt ({LOOK_IMAGE})",
                                elem_id="portrait-workflow-look")
            run = gr.Button("Run workflow", variant="primary", elem_id="portrait-workflow-run",
                            elem_classes=["portrait-submit"])
            message = gr.HTML(elem_id="portrait-workflow-message")
        with gr.Column():
            results = gr.Gallery(label="Every step's output", elem_id="portrait-workflow_gallery", columns=3)
            infotext = gr.Textbox(label="Infotext", lines=4, elem_id="portrait-workflow-infotext")
    widgets = WorkflowsTab(tab, preset, workflow, pose, look, run, message, results, infotext)
    preset.change(lambda name: json.dumps(PRESETS[name], indent=2), inputs=[preset], outputs=[workflow])
    run.click(lambda text, pose_image, look_image: run_workflow(backend, text, pose_image, look_image),
              inputs=[workflow, pose, look], outputs=[results, infotext, message])
    return widgets


def run_workflow(backend: UiBackend, text: str, pose_image, look_image) -> tuple:
    """Parse, validate and run; returns (gallery items, first infotext, message HTML)."""
    try:
        workflow = WorkflowParams(**json.loads(text or "{}"))
    except (ValueError, ValidationError) as error:
        return [], "", error_html(str(error), "The workflow is not valid")
    images = {name: image.convert("RGB") for name, image in ((POSE_IMAGE, pose_image), (LOOK_IMAGE, look_image))
              if image is not None}
    try:
        with backend.generation_context():
            outputs = backend.services.workflows.run(workflow, images)
    except PortraitError as error:
        return [], "", error_html(str(error), "Nothing generated")
    gallery = [(image, f"step {o.index + 1} · {o.op}") for o in outputs for image in o.images]
    gallery += [(image, f"step {o.index + 1} · {name}") for o in outputs for name, image in o.extras.items()]
    notes = [f"step {o.index + 1}: {note}" for o in outputs for note in o.notes]
    log.info("UI: ran a workflow of %d steps", len(outputs))
    return gallery, outputs[-1].infotexts[0], info_html("; ".join(notes) or f"{len(outputs)} steps done.")
