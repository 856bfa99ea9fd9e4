"""The Portrait Studio tabs: built under Gradio 3.41, then driven through their wired events as a user would
(a `Page` runs the same dependency graph Gradio serves), and once from a real headless browser."""

from __future__ import annotations

import copy
import html
import inspect
import re
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from portrait_core import config
from portrait_core.adapters import ui
from portrait_core.adapters.ui.files import UploadedFile
from portrait_core.adapters.ui.forms import build_params, model_widgets
from portrait_core.adapters.ui.train import latest_identity_score, progress_html
from portrait_core.jobs import FINISHED_STATES, JobRunner, job_status
from portrait_core.params import GenerateParams, TrainParams
from portrait_core.store import identity_paths
from tests.live_page import Browser, served, wait_until
from tests.service_factory import services_on

FAST_TRAINING = {"max-train-steps": 6, "resolution": 64, "validate-every": 3, "rank": 4, "alpha": 2.0,
                 "gradient-accumulation": 1, "learning-rate": 1e-3}
FAST_GENERATION = {"first-pass-steps": 3, "second-pass-steps": 3, "crop-size": 128, "seed": 4}


class Page:
    """One browser page on the Blocks: values by component, and events run as Gradio runs them (inputs as
    a dict or a list, event data, generators, `.then` chains, updates), minus the JSON in between."""

    def __init__(self, blocks: gr.Blocks):
        self.blocks = blocks
        self.by_elem_id = {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
        self.values = {key: copy.deepcopy(getattr(block, "value", None)) for key, block in blocks.blocks.items()}
        self.props: dict[int, dict] = {}

    def component(self, target):
        return self.by_elem_id[target] if isinstance(target, str) else target

    def set(self, target, value) -> None:
        self.values[self.component(target)._id] = value

    def get(self, target):
        return self.values[self.component(target)._id]

    def prop(self, target, name):
        return self.props.get(self.component(target)._id, {}).get(name)

    def trigger(self, target, event: str = "click", data: dict | None = None) -> list:
        """Fire `event` on the component; returns every frame any handler produced, in order."""
        block_id = self.component(target)._id
        frames: list = []
        for index, dependency in enumerate(self.blocks.dependencies):
            # Listeners that only cancel other events (a new progress watcher stops the old one) have no page to
            # act on here: every event runs to its end before the next.
            runs_code = self.blocks.fns[index].fn is not None and not dependency["cancels"]
            if block_id in dependency["targets"] and dependency["trigger"] == event and runs_code:
                self._run_chain(index, data, frames)
        return frames

    def select(self, target, index: int) -> list:
        return self.trigger(target, "select", {"index": index, "value": None})

    def _run_chain(self, index: int, data, frames: list) -> None:
        frames.extend(self._run(index, data))
        for after, dependency in enumerate(self.blocks.dependencies):
            if dependency["trigger_after"] == index:
                self._run_chain(after, None, frames)

    def _run(self, index: int, data) -> list:
        dependency, block_fn = self.blocks.dependencies[index], self.blocks.fns[index]
        inputs = [self.blocks.blocks[key] for key in dependency["inputs"]]
        outputs = [self.blocks.blocks[key] for key in dependency["outputs"]]
        if block_fn.inputs_as_dict:
            arguments = [{component: self.values[component._id] for component in inputs}]
        else:
            arguments = [self.values[component._id] for component in inputs]
        if dependency["collects_event_data"]:
            arguments.append(gr.SelectData(None, data))
        returned = block_fn.fn(*arguments)
        frames = []
        for frame in returned if inspect.isgenerator(returned) else [returned]:
            self._apply(frame, outputs)  # as it comes, like Gradio streams a generator's frames
            frames.append(frame)
        return frames

    def _apply(self, frame, outputs: list) -> None:
        if isinstance(frame, dict) and not _is_update(frame):
            pairs = list(frame.items())
        elif len(outputs) == 1:
            pairs = [(outputs[0], frame)]
        else:
            pairs = list(zip(outputs, frame, strict=True))
        for component, value in pairs:
            assert component in outputs, f"a handler updated {component}, which is not among its outputs"
            if _is_update(value):
                self.props.setdefault(component._id, {}).update(value)
                if "value" in value:
                    self.values[component._id] = value["value"]
            else:
                self.values[component._id] = value


def _is_update(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") in ("update", "generic_update")


def uploaded(*paths: Path) -> list:
    """What Gradio 3's gr.File(file_count="multiple") hands a handler: temp-file objects with the user's name."""
    return [SimpleNamespace(name=str(path), orig_name=path.name) for path in paths]


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", markup or ""))


class FakeInfotextUtils:
    """The parts of A1111 1.10.1's `modules.infotext_utils` the send-to hook uses, with their real signatures."""

    class ParamBinding:
        def __init__(self, paste_button, tabname, source_text_component=None, source_image_component=None,
                     source_tabname=None, override_settings_component=None, paste_field_names=None):
            self.paste_button, self.tabname = paste_button, tabname
            self.source_text_component, self.source_image_component = source_text_component, source_image_component

    def __init__(self):
        self.registered = []

    def register_paste_params_button(self, binding) -> None:
        self.registered.append(binding)


# -- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture
def identities_root(tmp_path, prepared_obama) -> Path:
    root = tmp_path / "identities"
    shutil.copytree(prepared_obama, root)
    return root


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory, shared_faces_dir) -> Path:
    """A small template (a third of the Biden photo: fast on the tiny model) in a templates folder."""
    folder = tmp_path_factory.mktemp("templates")
    image = Image.open(shared_faces_dir / "biden.jpg").convert("RGB")
    image.resize((image.width // 3, image.height // 3)).save(folder / "biden.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def service(obama_services):
    return obama_services


def make_backend(runner, root, *, services=None, tiny=None, **options) -> ui.UiBackend:
    """The tabs on `services`, else on standalone services (the tiny model, lazily) with identities in `root`,
    LoRAs in the settings' LoRA folder and `runner` as their job runner."""
    if services is None:
        from portrait_core import config
        from portrait_core.services.runtime import standalone_services
        from portrait_core.services.workspace import Workspace

        workspace = Workspace(root.parent / "home", config.settings().lora_dir, root)
        services = standalone_services(workspace, tiny, runner=runner)
    defaults = {"checkpoints": list, "template_dirs": list, "poll_seconds": 0.1}
    return ui.UiBackend(services, **(defaults | options))


def set_fields(page: Page, prefix: str, values: dict) -> None:
    for name, value in values.items():
        page.set(f"portrait-{prefix}-{name}", value)


# -- building -------------------------------------------------------------------------------------------

def test_standalone_blocks_have_prefixed_unique_ids_and_no_send_to_buttons(runner, tmp_path):
    blocks = ui.build_ui(make_backend(runner, tmp_path / "identities"))
    ids = [block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)]
    assert ids and all(elem_id.startswith("portrait-") for elem_id in ids), ids
    assert len(ids) == len(set(ids)), "duplicate element ids"
    classes = [name for block in blocks.blocks.values() for name in (getattr(block, "elem_classes", None) or [])]
    assert all(name.startswith("portrait-") for name in classes), classes
    assert not any("send-to" in elem_id for elem_id in ids)
    buttons = {block.value for block in blocks.blocks.values() if isinstance(block, gr.Button)}
    assert {"Start training", "Cancel training", "Generate", "Delete…", "Re-train…"} <= buttons


def test_webui_blocks_offer_send_to_img2img_inpaint_and_extras(runner, tmp_path):
    infotext_utils = FakeInfotextUtils()
    backend = make_backend(runner, tmp_path, webui=ui.WebUiHooks(send_to_buttons=ui.webui_send_to_buttons(
        infotext_utils)))
    [(blocks, title, tab_id)] = ui.webui_tabs(backend)
    assert isinstance(blocks, gr.Blocks) and (title, tab_id) == ("Portrait Studio", "portrait_studio")
    page = Page(blocks)
    gallery, infotext = page.component("portrait-results_gallery"), page.component("portrait-generate-infotext")
    assert [binding.tabname for binding in infotext_utils.registered] == ["img2img", "inpaint", "extras"]
    for binding in infotext_utils.registered:
        assert binding.source_image_component is gallery and binding.source_text_component is infotext
        assert binding.paste_button.elem_id == f"portrait-send-to-{binding.tabname}"
    # The WebUI's send-to script finds the selected image in galleries whose id ends in "_gallery".
    assert gallery.elem_id.endswith("_gallery")


def test_advanced_widgets_are_the_model_fields_with_their_defaults_and_ranges():
    with gr.Blocks():
        widgets = model_widgets(TrainParams, id_prefix="t", exclude=("identity", "base_model"))
    assert list(widgets) == [name for name in TrainParams.__fields__ if name not in ("identity", "base_model")]
    assert (widgets["batch_size"].minimum, widgets["batch_size"].maximum) == (1, 64)
    assert isinstance(widgets["max_train_steps"], gr.Number) and widgets["max_train_steps"].value == 800
    assert isinstance(widgets["learning_rate"], gr.Number), "a 1e-4 rate on a slider cannot be picked"
    assert widgets["resolution"].value == "" and "automatic" in widgets["resolution"].label
    untouched = {name: widget.value for name, widget in widgets.items()}
    assert build_params(TrainParams, untouched, identity="ana") == TrainParams(identity="ana")
    with gr.Blocks():
        generate = model_widgets(GenerateParams, id_prefix="g", exclude=("identities",))
    assert generate["sampler"].choices == list(GenerateParams.__fields__["sampler"].type_.__args__)
    assert isinstance(generate["restore_faces"], gr.Checkbox) and generate["restore_faces"].value is True
    values = {name: widget.value for name, widget in generate.items()} | {"face_order": "1, 0"}
    params = build_params(GenerateParams, values, identities=["a", "b"])
    assert params.face_order == [1, 0] and params == GenerateParams(identities=["a", "b"], face_order=[1, 0])


# -- Train tab ------------------------------------------------------------------------------------------

def test_invalid_identity_name_is_named_and_nothing_is_written(runner, tmp_path, shared_faces_dir):
    root = tmp_path / "identities"
    page = Page(ui.build_ui(make_backend(runner, root)))
    page.set("portrait-train-photos", uploaded(*sorted(shared_faces_dir.glob("obama*.jpg"))))
    for bad_name in ("../escape", "ana lopez", ""):
        page.set("portrait-train-identity", bad_name)
        page.trigger("portrait-train-start")
        message = text_of(page.get("portrait-train-message"))
        assert "Training not started" in message and "Identity name (identity)" in message, message
        assert repr(bad_name) in message or not bad_name
    page.set("portrait-train-identity", "ana")
    page.set("portrait-train-max-train-steps", 0)
    page.trigger("portrait-train-start")
    assert "Max train steps (max_train_steps)" in text_of(page.get("portrait-train-message"))
    assert not root.exists() and runner.jobs() == []
    assert page.get("portrait-train-progress") == page.component("portrait-train-progress").value


def test_a_folder_with_no_usable_photo_reports_why_and_keeps_nothing(runner, tmp_path, shared_faces_dir):
    not_a_photo = tmp_path / "notes.txt"
    not_a_photo.write_text("not a picture")
    root = tmp_path / "identities"
    page = Page(ui.build_ui(make_backend(runner, root)))
    page.set("portrait-train-photos", uploaded(not_a_photo))
    page.set("portrait-train-identity", "ana")
    page.trigger("portrait-train-start")
    assert "Training not started" in text_of(page.get("portrait-train-message"))
    report = page.get("portrait-train-report")
    assert "notes.txt" in report and "rejected" in report and "not a picture" in report
    assert runner.jobs() == [] and not (root / "ana").exists() and not (root / ".uploads").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd15, shared_faces_dir):
    """The Train tab used once for real: five Obama photos and a Biden photo, the tiny model, six steps."""
    home = tmp_path_factory.mktemp("train-tab")
    config.configure(lora_dir=home / "Lora")
    runner = JobRunner(home / "jobs")
    backend = make_backend(runner, home / "identities", tiny=tiny_sd15, checkpoints=lambda: [tiny_sd15.name])
    page = Page(ui.build_ui(backend))
    photos = [*sorted(shared_faces_dir.glob("obama*.jpg")), shared_faces_dir / "biden.jpg"]
    page.set("portrait-train-photos", as_gradio_uploads(photos, home / "gradio-uploads"))
    page.set("portrait-train-identity", "obama")
    set_fields(page, "train", FAST_TRAINING)
    frames = page.trigger("portrait-train-start")
    yield SimpleNamespace(page=page, frames=frames, runner=runner, backend=backend, home=home)
    runner.close()
    config.reset()


def as_gradio_uploads(photos: list[Path], folder: Path) -> list[UploadedFile]:
    """What the photos input hands the handler after a browser uploaded `photos`: each in its own upload folder."""
    uploads = []
    for index, photo in enumerate(photos):
        copy_to = folder / f"{index:040x}" / photo.name
        copy_to.parent.mkdir(parents=True)
        shutil.copyfile(photo, copy_to)
        uploads.append(UploadedFile(str(copy_to), photo.name))
    return uploads


def test_a_queued_training_lets_go_of_its_uploaded_photos(trained, shared_faces_dir):
    uploads = trained.page.get("portrait-train-photos")
    assert any(job.kind == "train" for job in trained.runner.jobs()), "the training was not queued"
    assert not any(Path(upload.name).exists() for upload in uploads)  # the upload folder's copies are gone
    assert any(identity_paths("obama", trained.backend.root).photos.iterdir())  # the identity keeps its copies
    assert (shared_faces_dir / "obama.jpg").is_file()


def test_start_queues_a_job_and_the_progress_advances_until_done(trained):
    page, runner = trained.page, trained.runner
    [job] = runner.jobs()
    assert job.state in FINISHED_STATES
    assert f"job {job.id}" in text_of(page.get("portrait-train-message"))
    progress = [text_of(frame[page.component("portrait-train-progress")]) for frame in trained.frames
                if page.component("portrait-train-progress") in frame]
    steps = [int(match) for text in progress for match in re.findall(r"step (\d+)/6", text)]
    assert len(progress) >= 3 and steps == sorted(steps) and steps[-1] == 6, progress
    assert "done" in progress[-1] and "LoRA 'obama' saved" in progress[-1], job.error
    assert (trained.home / "Lora" / "obama.safetensors").is_file()


def test_the_report_lists_each_photo_and_why_the_other_person_was_rejected(trained):
    report = trained.page.get("portrait-train-report")
    rows = re.findall(r"<tr class=\"(portrait-kept|portrait-rejected)\">(.*?)</tr>", report)
    assert len(rows) == 6 and sum(kind == "portrait-kept" for kind, _ in rows) >= 3
    [(_, biden)] = [row for row in rows if "biden.jpg" in row[1]]
    assert "rejected" in biden and "different person" in biden
    assert report.count('src="data:image/jpeg;base64,') == 6, "every photo has a thumbnail"
    assert "kept (reference)" in report


def test_identities_tab_lists_renames_then_deletes_after_confirmation(trained):
    page = trained.page
    page.trigger("portrait-tab-identities", "select")
    table = page.get("portrait-identities-table")
    [row] = table
    assert row[0] == "obama" and row[1].endswith("UTC") and row[3].endswith("MB") and row[5] == "ready"
    assert row[2] == f"{trained.backend.checkpoints()[0]} (SD1.5)"  # the base it was trained on, and its family
    assert [caption for _, caption in page.get("portrait-identities-faces")] == ["obama"]
    page.trigger("portrait-identities-delete")
    assert page.prop("portrait-identities-confirm", "visible") is True
    assert "obama" in text_of(page.get("portrait-identities-confirm-text"))
    page.trigger("portrait-identities-keep")
    assert page.prop("portrait-identities-confirm", "visible") is False
    assert (trained.home / "identities" / "obama").is_dir()
    page.set("portrait-identities-new-name", "../barack")
    page.trigger("portrait-identities-rename")
    assert "New name" in text_of(page.get("portrait-identities-message"))
    assert (trained.home / "identities" / "obama").is_dir(), "a refused rename changes nothing"
    page.set("portrait-identities-new-name", "barack")
    page.trigger("portrait-identities-rename")
    assert "Renamed 'obama' to 'barack'" in text_of(page.get("portrait-identities-message"))
    assert page.get("portrait-identities-table")[0][0] == "barack"
    assert (trained.home / "Lora" / "barack.safetensors").is_file()
    page.trigger("portrait-identities-delete")
    page.trigger("portrait-identities-confirm-delete")
    assert "Deleted 'barack'" in text_of(page.get("portrait-identities-message"))
    assert not (trained.home / "identities" / "barack").exists()
    assert not (trained.home / "Lora" / "barack.safetensors").exists()
    assert page.get("portrait-identities-table") is None and page.get("portrait-identities-faces") == []


def test_retrain_fills_the_train_tab_for_that_identity(runner, identities_root):
    page = Page(ui.build_ui(make_backend(runner, identities_root)))
    page.set("portrait-identities-selected", "obama")
    page.trigger("portrait-identities-retrain")
    assert page.get("portrait-train-identity") == "obama"
    assert page.prop("portrait-studio", "selected") == "train"
    assert "prepared photos" in text_of(page.get("portrait-train-message"))
    assert "kept (reference)" in page.get("portrait-train-report")


def test_progress_shows_step_eta_and_the_latest_identity_score(runner, tmp_path):
    job = runner.submit("train", "ana", ["portrait_core.nothing"], tmp_path / "run")
    runner.cancel(job.id)
    (tmp_path / "run").mkdir(exist_ok=True)
    lines = ['{"phase": "checkpoint", "step": 3, "total": 9, "identity_score": 0.61}',
             '{"phase": "training", "step": 4, "total": 9, "loss": 0.25, "eta_s": 65}']
    (tmp_path / "run" / "progress.jsonl").write_text("\n".join(lines) + "\n")
    job.state, job.progress = "running", {"phase": "training", "step": 4, "total": 9, "loss": 0.25, "eta_s": 65}
    shown = text_of(progress_html(job, latest_identity_score(job)))
    assert "Training" in shown and "step 4/9" in shown and "ETA 1m05s" in shown and "identity score 0.610" in shown
    assert 'style="width: 44.4%"' in progress_html(job, None)


def test_the_photo_encoding_moves_the_bar_under_its_own_label(runner, tmp_path):
    job = runner.submit("train", "ana", ["portrait_core.nothing"], tmp_path / "run")
    runner.cancel(job.id)
    job.state, job.progress = "running", {"phase": "encoding", "step": 4, "total": 10, "eta_s": 30}
    shown = text_of(progress_html(job, None))
    assert "Encoding the photos" in shown and "step 4/10" in shown and "ETA 0m30s" in shown
    assert 'style="width: 40.0%"' in progress_html(job, None)
    assert job_status(job)["fraction"] is None, "the job's own fraction (HTTP) must not run 0..1 twice"


def test_a_new_page_finds_the_running_training_and_cancels_it(tmp_path):
    # The job is a plain sleeping process: what matters here is the page, not what the job does.
    runner = JobRunner(tmp_path / "jobs", use_accelerate=False)
    try:
        job = runner.submit("train", "ana", ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)"],
                            tmp_path / "run")
        wait_until(lambda: runner.get(job.id).state == "running", 20, "the job to start")
        page = Page(ui.build_ui(make_backend(runner, tmp_path / "identities")))
        page.trigger("portrait-train-cancel")
        assert "No training of this page is running" in text_of(page.get("portrait-train-message"))
        watching = threading.Thread(target=page.trigger, args=("portrait-train-show-progress",))
        watching.start()
        wait_until(lambda: "ana: starting" in text_of(page.get("portrait-train-progress")), 20, "the progress")
        page.trigger("portrait-train-cancel")
        assert "Cancelling the training of 'ana'" in text_of(page.get("portrait-train-message"))
        watching.join(timeout=30)
        assert not watching.is_alive() and "ana: cancelled" in text_of(page.get("portrait-train-progress"))
    finally:
        runner.close()


def test_retry_queues_a_failed_training_again_and_follows_it_to_the_end(tmp_path):
    # A trainer stand-in that fails on its first run and succeeds on the next, as a crash then a resume would.
    marker = tmp_path / "ran-once"
    first_run_fails = (f"import os, sys; seen = os.path.exists({str(marker)!r}); open({str(marker)!r}, 'w').close(); "
                       "seen or sys.exit(3)")
    runner = JobRunner(tmp_path / "jobs", use_accelerate=False)
    try:
        page = Page(ui.build_ui(make_backend(runner, tmp_path / "identities")))
        page.trigger("portrait-train-retry")
        assert "No failed or cancelled training" in text_of(page.get("portrait-train-message"))
        (tmp_path / "identities" / "ana").mkdir(parents=True)  # a training always has its identity's folder
        job = runner.submit("train", "ana", ["timeit", "-n", "1", "-r", "1", "-s", first_run_fails, "pass"],
                            tmp_path / "run")
        assert runner.wait(job.id, timeout=30).state == "failed"
        page.set("portrait-train-identity", "ana")  # e.g. after a reload: the form names the identity
        page.trigger("portrait-train-retry")
        assert f"queued again (job {job.id})" in text_of(page.get("portrait-train-message"))
        assert "ana: done" in text_of(page.get("portrait-train-progress")), "the progress was not followed"
        assert runner.get(job.id).state == "done" and runner.get(job.id).attempts == 2
        page.trigger("portrait-train-retry")  # the page's job is done now: nothing to retry
        message = text_of(page.get("portrait-train-message"))
        assert "Training not retried" in message and "only failed or cancelled" in message
    finally:
        runner.close()


def test_leaving_the_name_field_says_at_once_what_is_wrong_or_that_it_exists(runner, identities_root):
    page = Page(ui.build_ui(make_backend(runner, identities_root)))
    page.set("portrait-train-identity", "ana lopez")
    page.trigger("portrait-train-identity", "blur")
    assert "Identity name (identity)" in text_of(page.get("portrait-train-identity-hint"))
    page.set("portrait-train-identity", "obama")
    page.trigger("portrait-train-identity", "blur")
    assert "'obama' exists" in text_of(page.get("portrait-train-identity-hint"))


# -- Generate tab ---------------------------------------------------------------------------------------

def test_generate_ranks_results_by_identity_score_with_the_score_in_each_caption(runner, service, prepared_obama,
                                                                                 template_dir):
    backend = make_backend(runner, prepared_obama, services=service,
                           template_dirs=lambda: [template_dir])
    page = Page(ui.build_ui(backend))
    assert page.get("portrait-generate-face-1") == "obama"
    page.select("portrait-template-gallery", 0)
    assert "biden.jpg" in text_of(page.get("portrait-generate-selected-template"))
    set_fields(page, "generate", FAST_GENERATION | {"batch": 3})
    page.trigger("portrait-generate-start")
    results = page.get("portrait-results_gallery")
    assert len(results) == 3, text_of(page.get("portrait-generate-message"))
    scores = [float(re.match(r"score (-?\d\.\d+) · obama ", caption).group(1)) for _, caption in results]
    assert scores == sorted(scores, reverse=True)
    seeds = [int(re.search(r"seed (\d+)$", caption).group(1)) for _, caption in results]
    assert sorted(seeds) == [4, 5, 6]
    infotext = page.get("portrait-generate-infotext")
    assert f"Seed: {seeds[0]}" in infotext and results[0][0].info["parameters"] == infotext
    page.select("portrait-results_gallery", 2)
    assert f"Seed: {seeds[2]}" in page.get("portrait-generate-infotext")


def test_generate_says_what_is_missing_instead_of_failing(runner, service, prepared_obama, template_dir):
    backend = make_backend(runner, prepared_obama, services=service, template_dirs=lambda: [template_dir])
    page = Page(ui.build_ui(backend))
    page.trigger("portrait-generate-start")
    assert "click a template in the gallery" in text_of(page.get("portrait-generate-message"))
    page.trigger("portrait-generate-upload-tab", "select")
    page.trigger("portrait-generate-start")
    assert "upload a photo first" in text_of(page.get("portrait-generate-message"))
    page.set("portrait-generate-face-1", None)
    page.trigger("portrait-generate-start")
    assert "Face 1 (identities)" in text_of(page.get("portrait-generate-message"))
    page.set("portrait-generate-face-1", "obama")
    page.set("portrait-generate-upload", Image.new("RGB", (96, 96), "white"))
    page.set("portrait-generate-crop-size", 100)
    page.trigger("portrait-generate-start")
    assert "Crop size (crop_size): crop_size must be a multiple of 8" in text_of(page.get("portrait-generate-message"))
    page.set("portrait-generate-crop-size", 128)
    page.trigger("portrait-generate-start")
    assert "has no face" in text_of(page.get("portrait-generate-message"))
    assert page.get("portrait-results_gallery") in (None, [])


# -- in a real browser ----------------------------------------------------------------------------------

def test_the_standalone_page_in_a_real_browser(request, browser, service, identities_root, template_dir, tmp_path):
    from fastapi import FastAPI

    runner = JobRunner(tmp_path / "jobs", use_accelerate=False)
    request.addfinalizer(runner.close)
    # A training started elsewhere (a plain sleeping process: only the page matters here).
    sleeping = runner.submit("train", "ana", ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)"],
                             tmp_path / "run")
    app = FastAPI()
    fast = {"first_pass_steps": 3, "second_pass_steps": 3, "crop_size": 128, "seed": 4}
    services = services_on(service.host(), identities=identities_root, home=tmp_path / "home", runner=runner,
                           analyzer=service.generation.generator.analyzer)
    ui.mount_standalone(app, services, template_dirs=lambda: [template_dir], initial_values={"generate": fast})
    too_small = tmp_path / "tiny.png"
    Image.new("RGB", (40, 40), "gray").save(too_small)
    with served(app) as url:
        browser.open(url)
        wait_until(lambda: browser.text("#portrait-train-start"), 60, "the Portrait Studio page")
        follow_and_cancel_in_browser(browser)
        assert runner.get(sleeping.id).state == "cancelled"
        train_in_browser(browser, too_small)
        own_photo = tmp_path / "my template (1).jpg"
        shutil.copy(template_dir / "biden.jpg", own_photo)
        generate_in_browser(browser, own_photo)
        delete_in_browser(browser)
    assert not (identities_root / "ana-x").exists() and not (identities_root / "obama").exists()


def follow_and_cancel_in_browser(browser: Browser) -> None:
    """The page finds the running training, shows its progress live, and cancels it."""
    browser.click("#portrait-train-show-progress")
    browser.wait_for_text("#portrait-train-progress", "ana: starting")
    browser.click("#portrait-train-cancel")
    browser.wait_for_text("#portrait-train-message", "Cancelling the training of 'ana'")
    browser.wait_for_text("#portrait-train-progress", "ana: cancelled")


def train_in_browser(browser: Browser, photo: Path) -> None:
    """A photo and an invalid name, then a valid name: the report says why the photo was rejected."""
    name_field = "#portrait-train-identity textarea, #portrait-train-identity input"
    browser.type("#portrait-train-photos input[type=file]", str(photo))
    browser.wait_for_text("#portrait-train-photos", photo.name)
    browser.type(name_field, "ana lopez")
    browser.click("#portrait-train-start")
    browser.wait_for_text("#portrait-train-message", "Identity name (identity)")
    browser.type(name_field, "ana-x", clear=True)
    browser.click("#portrait-train-start")
    report = browser.wait_for_text("#portrait-train-report", photo.name)
    assert "rejected" in report and "too small" in report


def generate_in_browser(browser: Browser, template: Path) -> None:
    """Pick the template in the gallery, render, read the score under the result and its infotext; then
    upload `template` in "Upload one" and render it."""
    browser.click_tab("Generate")
    wait_until(lambda: browser.script("return root.querySelectorAll('#portrait-template-gallery img').length"),
               20, "the template gallery")
    browser.script("root.querySelector('#portrait-template-gallery img').closest('button').click();")
    browser.wait_for_text("#portrait-generate-selected-template", "biden.jpg")
    browser.click("#portrait-generate-start")
    browser.wait_for_text("#portrait-generate-message", "portrait(s)", timeout=120)
    assert "Seed: 4" in browser.script("return root.querySelector('#portrait-generate-infotext textarea').value;")
    captions = browser.text("#portrait-results_gallery")
    assert re.search(r"score -?\d\.\d{3} · obama", captions), captions
    # A photo from "Upload one" is reported under its own file name, not as upload.png.
    browser.click_tab("Upload one")
    browser.type("#portrait-generate-upload input[type=file]", str(template))
    wait_until(lambda: browser.script("return root.querySelectorAll('#portrait-generate-upload img').length"),
               20, "the uploaded template's preview")
    browser.click("#portrait-generate-start")
    wait_until(lambda: template.name in browser.text("#portrait-results_gallery"), 120,
               f"a result captioned with {template.name}")
    assert "upload.png" not in browser.text("#portrait-results_gallery")


def delete_in_browser(browser: Browser) -> None:
    """The prepared identity is listed; it is deleted only after the confirmation."""
    browser.click_tab("Identities")
    browser.wait_for_text("#portrait-identities-table", "obama")
    browser.click("#portrait-identities-delete")
    browser.wait_for_text("#portrait-identities-confirm", "cannot be undone")
    browser.click("#portrait-identities-confirm-delete")
    browser.wait_for_text("#portrait-identities-message", "Deleted 'obama'")


# -- workflows ------------------------------------------------------------------------------------------

def test_workflows_tab_runs_a_pose_transfer_and_shows_every_step(runner, tmp_path, service, shared_faces_dir):
    import json

    from portrait_core.adapters.ui.workflows import POSE_IMAGE, PRESETS, run_workflow

    backend = make_backend(runner, tmp_path / "identities", services=service)
    flow = json.loads(json.dumps(PRESETS["Pose transfer"]))
    flow["steps"][0].update(steps=2, width=64, height=64, seed=1)
    pose = Image.open(shared_faces_dir / "obama3.jpg").convert("RGB")
    gallery, infotext, message = run_workflow(backend, json.dumps(flow), pose.resize((pose.width // 4,
                                                                                     pose.height // 4)), None)
    captions = [caption for _, caption in gallery]
    assert captions == ["step 1 · pose_transfer", "step 2 · restore", "step 3 · upscale", "step 1 · pose"]
    assert gallery[2][0].size == (128, 128)
    assert "restoration skipped" in message  # the standalone host has no CodeFormer
    assert "Upscale" in infotext or "upscale" in infotext
    _, _, refused = run_workflow(backend, json.dumps(flow), None, None)  # no pose image given
    assert "pose_image" in refused and POSE_IMAGE in refused
    _, _, invalid = run_workflow(backend, '{"steps": [{"op": "teleport"}]}', None, None)
    assert "unknown op" in invalid


# -- one core behind the tabs and the HTTP API ----------------------------------------------------------------

def test_the_tab_and_the_api_cannot_both_start_a_training_of_one_identity(tmp_path, tiny_sd15, shared_faces_dir):
    """A click and an API call at the same moment: one training is queued, the other is told which job holds
    the identity, and the identity keeps the winner's photos (never a mix)."""
    import json

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from portrait_core.adapters.http.api import API_PREFIX, ApiContext, mount_api
    from portrait_core.services.runtime import standalone_services
    from portrait_core.services.workspace import Workspace

    services = standalone_services(Workspace.at(tmp_path / "home"), tiny_sd15)
    try:
        page = Page(ui.build_ui(ui.UiBackend(services, checkpoints=list, template_dirs=list, poll_seconds=0.1)))
        app = FastAPI()
        mount_api(app, ApiContext(services=services))
        client = TestClient(app)
        obama = sorted(shared_faces_dir.glob("obama*.jpg"))
        page.set("portrait-train-photos", uploaded(*obama))  # the tab sends five photos ...
        page.set("portrait-train-identity", "ana")
        set_fields(page, "train", FAST_TRAINING)
        files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in obama[:3]]  # ... the API three
        params = {"identity": "ana", "max_train_steps": 6, "resolution": 64, "validate_every": 3, "rank": 4,
                  "gradient_accumulation": 1}
        both_ready, answers = threading.Barrier(2), {}

        def click() -> None:
            both_ready.wait()
            page.trigger("portrait-train-start")
            answers["tab"] = text_of(page.get("portrait-train-message"))

        def call() -> None:
            both_ready.wait()
            answers["api"] = client.post(f"{API_PREFIX}/train", files=files, data={"params": json.dumps(params)})

        threads = [threading.Thread(target=click), threading.Thread(target=call)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        [job] = services.runner.jobs()
        api_won = answers["api"].status_code == 200
        if api_won:
            assert answers["api"].json()["job_id"] == job.id
            assert "Training not started" in answers["tab"] and f"job {job.id}" in answers["tab"], answers["tab"]
        else:
            assert answers["api"].status_code == 409 and job.id in answers["api"].text, answers["api"].text
            assert f"Training of 'ana' queued (job {job.id})" in answers["tab"], answers["tab"]
        photos = services.identities.info("ana").photos
        assert photos == (3 if api_won else 5), "the refused door's photos replaced the accepted ones"
    finally:
        services.close()


def test_two_api_generations_a_background_job_and_a_tab_click_at_once_each_get_their_own_image(
        service, template_dir):
    """serve's four callers on one DiffusersHost at the same time: each gets the image it gets alone."""
    import base64
    import io

    from fastapi.testclient import TestClient

    from portrait_core.adapters.http.api import API_PREFIX
    from portrait_core.adapters.standalone import create_app

    template = Image.open(template_dir / "biden.jpg").convert("RGB")
    fast = {"identities": ["obama"], "first_pass_steps": 3, "second_pass_steps": 3, "crop_size": 128}
    alone = {seed: np.asarray(service.generation.generate(GenerateParams(**fast, seed=seed),
                                                          [("biden.jpg", template)])[0][0].image)
             for seed in (4, 5, 6, 7)}
    client = TestClient(create_app(services=service, with_ui=False).app)
    page = Page(ui.build_ui(ui.UiBackend(service, template_dirs=lambda: [template_dir], checkpoints=list)))
    page.select("portrait-template-gallery", 0)
    set_fields(page, "generate", FAST_GENERATION | {"seed": 7})
    data = base64.b64encode((template_dir / "biden.jpg").read_bytes()).decode("ascii")
    start, got, errors = threading.Barrier(4), {}, []

    def post(seed: int, background: bool = False) -> None:
        start.wait()
        response = client.post(f"{API_PREFIX}/generate", json={
            "params": fast | {"seed": seed}, "templates": [{"name": "biden.jpg", "data": data}],
            "background": background})
        if response.status_code != 200:
            errors.append(response.text)
            return
        if background:
            job = service.runner.wait(response.json()["job_id"], timeout=300)
            if job.state != "done":
                errors.append(job.error)
                return
            response = client.get(f"{API_PREFIX}/jobs/{job.id}/results")
        image = response.json()["images"][0]["image"]
        got[seed] = np.asarray(Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB"))

    def click() -> None:
        start.wait()
        page.trigger("portrait-generate-start")
        [(image, _)] = page.get("portrait-results_gallery") or [(None, None)]
        if image is None:
            errors.append(text_of(page.get("portrait-generate-message")))
        else:
            got[7] = np.asarray(image.convert("RGB"))

    threads = [threading.Thread(target=post, args=(4,)), threading.Thread(target=post, args=(5,)),
               threading.Thread(target=post, args=(6, True)), threading.Thread(target=click)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == []
    assert sorted(got) == [4, 5, 6, 7]
    for seed, image in got.items():
        assert np.array_equal(image, alone[seed]), f"seed {seed} differs from the same request alone"


def test_identities_tab_says_when_a_lora_does_not_fit_the_checkpoint_in_use(runner, identities_root, tiny_sd15,
                                                                            tmp_path):
    import torch

    from portrait_core.models.lora import LoraLayer, write_lora_file

    config.configure(lora_dir=tmp_path / "Lora")
    try:
        backend = make_backend(runner, identities_root, tiny=tiny_sd15)
        backend.services.host()  # standalone, the fit is shown once the host is up
        layer = LoraLayer(torch.zeros(2, 4), torch.zeros(4, 2), 1.0)
        write_lora_file(tmp_path / "Lora" / "obama.safetensors", {"lora_unet_x": layer}, {
            "portrait_studio.identity": "obama", "portrait_studio.family": "sdxl",
            "portrait_studio.base_model": "sdxl-base.safetensors"})
        page = Page(ui.build_ui(backend))
        page.trigger("portrait-tab-identities", "select")
        [row] = page.get("portrait-identities-table")
        assert row[2] == "sdxl-base.safetensors (SDXL)"
        assert row[5].startswith("not usable here:") and "SD1.5" in row[5] and tiny_sd15.name in row[5], row[5]
    finally:
        config.reset()


def test_the_forms_spell_labels_the_way_the_webui_does():
    with gr.Blocks():
        widgets = model_widgets(GenerateParams, id_prefix="portrait-spelling")
    labels = {name: widget.label.split(" (")[0] for name, widget in widgets.items()}  # without the hint
    assert labels["cfg_scale"] == "CFG Scale" and labels["ip_adapter_weight"] == "IP-Adapter weight"
    assert labels["codeformer_weight"] == "CodeFormer weight" and labels["lora_weight"] == "LoRA weight"
    assert labels["openpose_weight"] == "OpenPose weight" and labels["first_pass_steps"] == "First pass steps"


def test_the_summary_says_no_face_was_found_instead_of_a_zero_score():
    from portrait_core.adapters.ui.generate import _summary
    from portrait_core.generate.pipeline import FaceResult, PortraitResult

    def made(score):
        return PortraitResult(image=Image.new("RGB", (8, 8)), template="t.png", seed=1, seconds=0.1,
                              faces=[FaceResult("ana", [0, 0, 4, 4], score)])

    assert "no face found in the result" in _summary([(made(None), "")])
    assert "0.000" not in _summary([(made(None), "")])
    assert "best identity score 0.420" in _summary([(made(0.42), "")])


@pytest.mark.parametrize(("sent", "shown"), [("studio shot (2).jpg", "studio shot (2).jpg"),
                                             ("C:\\Users\\ana\\me.png", "me.png"), ("../../etc/passwd", "passwd"),
                                             ("<img src=x onerror=alert(1)>.png", "upload.png"), ("", "upload.png"),
                                             ("x" * 300 + ".png", "upload.png")])
def test_an_uploaded_template_keeps_its_file_name_and_never_a_path(sent, shown):
    from portrait_core.adapters.ui.generate import _uploaded_template

    [(name, image)] = _uploaded_template(Image.new("RGB", (8, 8)), sent)
    assert name == shown and image.size == (8, 8)


def test_the_report_says_which_kept_photos_had_their_small_face_super_resolved():
    from portrait_core.adapters.ui.train import report_html

    table = report_html({"photos": [{"file": "far.jpg", "kept": True, "enhanced": True},
                                    {"file": "near.jpg", "kept": True, "enhanced": False}]})
    rows = table.split("<tr")[2:]
    assert "super-resolved" in rows[0] and "far.jpg" in rows[0]
    assert "super-resolved" not in rows[1]
