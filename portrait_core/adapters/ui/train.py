"""The Train tab: photos + identity name + base checkpoint + advanced parameters -> a queued training job,
the preparation report as a table with thumbnails, and a live progress bar polled from the job runner."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from pydantic import ValidationError

from portrait_core.adapters.ui.backend import UiBackend, log
from portrait_core.adapters.ui.files import UploadedFiles, discard_uploads
from portrait_core.adapters.ui.forms import (
    FormError,
    build_params,
    error_html,
    info_html,
    model_widgets,
    validation_messages,
    widget_values,
)
from portrait_core.adapters.ui.images import thumbnail_data_uri
from portrait_core.errors import (
    CheckpointError,
    IdentityError,
    ModelUnavailableError,
    NoUsablePhotosError,
    PortraitError,
)
from portrait_core.jobs import (
    DONE,
    FAILED,
    FINISHED_STATES,
    QUEUED,
    Job,
    JobNotFoundError,
    JobStateError,
    JobStoreError,
    job_status,
)
from portrait_core.params import TrainParams
from portrait_core.services.identities import IdentityBusyError
from portrait_core.services.training import DatasetMissingError
from portrait_core.services.uploads import UploadLimits, safe_photo_name
from portrait_core.store import identity_paths, read_json, validate_identity_id
from portrait_core.training.trainer import eta_text

IDLE_PROGRESS = '<div class="portrait-progress portrait-idle">No training running.</div>'
PHASE_LABELS = {"loading": "Loading the base model", "encoding": "Encoding the photos", "training": "Training",
                "validating": "Validating",
                "checkpoint": "Saved a checkpoint", "merging": "Merging the best checkpoints",
                "merged": "Merged", "early_stop": "Stopping early (no more gain)", "done": "Done"}


class Refusal(Exception):  # noqa: N818 - not a bug: what the user is told instead of doing it
    """Why a click did nothing; `lines` go to the message area, `report` (HTML) to the report area."""

    def __init__(self, lines: list[str] | str, report: str | None = None):
        super().__init__("; ".join([lines] if isinstance(lines, str) else lines))
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        self.report = report


@dataclass
class UploadedPhoto:
    name: str  # as the user's computer called it
    file: str  # the name it is saved under (safe_photo_name)
    data: bytes
    path: Path  # Gradio's temporary copy


@dataclass
class TrainTab:
    tab: gr.Tab
    photos: UploadedFiles
    identity: gr.Textbox
    identity_hint: gr.HTML
    checkpoint: gr.Dropdown
    refresh_checkpoints: gr.Button
    advanced: dict
    start: gr.Button
    cancel: gr.Button
    retry: gr.Button
    message: gr.HTML
    progress: gr.HTML
    show_progress: gr.Button
    report: gr.HTML
    job_id: gr.State
    handlers: TrainHandlers | None = None


# -- layout ---------------------------------------------------------------------------------------------

def build_train_tab(backend: UiBackend) -> TrainTab:
    with gr.Tab("Train", id="train", elem_id="portrait-tab-train") as tab:
        with gr.Row(equal_height=False):
            with gr.Column(elem_classes=["portrait-panel"]):
                form = _train_form(backend)
            with gr.Column():
                progress = gr.HTML(IDLE_PROGRESS, elem_id="portrait-train-progress")
                show_progress = gr.Button("Show the running training", size="sm",
                                          elem_id="portrait-train-show-progress")
                report = gr.HTML(elem_id="portrait-train-report")
        job_id = gr.State(None)
    widgets = TrainTab(tab=tab, progress=progress, show_progress=show_progress, report=report, job_id=job_id, **form)
    widgets.handlers = TrainHandlers(backend, widgets)
    _connect_train_events(widgets)
    return widgets


def _train_form(backend: UiBackend) -> dict:
    photos = UploadedFiles(label="Photos of one person (5–20: face visible, mostly frontal)", file_count="multiple",
                           file_types=["image"], elem_id="portrait-train-photos")
    identity = gr.Textbox(label="Identity name", placeholder="e.g. ana-lopez", elem_id="portrait-train-identity",
                          info="letters, digits, '-' and '_'; it also names the LoRA. Without photos, Start "
                               "trains this identity again from its prepared photos.")
    identity_hint = gr.HTML(elem_id="portrait-train-identity-hint")
    choices = backend.list_checkpoints(ask_host=False)
    with gr.Row():
        checkpoint = gr.Dropdown(choices=choices, value=backend.first_checkpoint(choices), label="Base checkpoint",
                                 info="empty: the default base model", elem_id="portrait-train-checkpoint", scale=4)
        refresh_checkpoints = gr.Button("↻ Refresh", elem_id="portrait-train-refresh-checkpoints", scale=1,
                                        elem_classes=["portrait-tool"])
    with gr.Accordion("Advanced parameters", open=False, elem_id="portrait-train-advanced"):
        advanced = model_widgets(TrainParams, id_prefix="train", exclude=("identity", "base_model"),
                                 initial=backend.initial_values.get("train"))
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="portrait-train-start",
                          elem_classes=["portrait-submit"])
        cancel = gr.Button("Cancel training", elem_id="portrait-train-cancel")
        retry = gr.Button("Retry training", elem_id="portrait-train-retry")
    message = gr.HTML(elem_id="portrait-train-message")
    return {"photos": photos, "identity": identity, "identity_hint": identity_hint, "checkpoint": checkpoint,
            "refresh_checkpoints": refresh_checkpoints, "advanced": advanced, "start": start, "cancel": cancel,
            "retry": retry, "message": message}


def _connect_train_events(w: TrainTab) -> None:
    handlers = w.handlers
    form_inputs = {w.photos, w.identity, w.checkpoint, *w.advanced.values()}
    started = w.start.click(handlers.start, inputs=form_inputs, outputs=[w.message, w.report, w.progress, w.job_id])
    # The bar is the progress: Gradio's own status overlay on a streaming output covered its first letters.
    watch = {"fn": handlers.watch, "inputs": [w.job_id], "outputs": [w.progress], "show_progress": "hidden"}
    watchers = [started.then(**watch)]
    for trigger in (w.show_progress.click, w.tab.select):
        resumed = trigger(handlers.resume, inputs=[w.job_id], outputs=[w.job_id])
        watchers.append(resumed.then(**watch))
    retried = w.retry.click(handlers.retry, inputs=[w.job_id, w.identity], outputs=[w.message, w.progress, w.job_id])
    watchers.append(retried.then(**watch))
    # One watcher per page: a new one (Start, Retry, or the tab shown again) stops the one before.
    for trigger in (w.start.click, w.show_progress.click, w.tab.select, w.retry.click):
        trigger(None, None, None, cancels=watchers)
    w.cancel.click(handlers.cancel, inputs=[w.job_id], outputs=[w.message])
    w.identity.blur(handlers.check_identity, inputs=[w.identity], outputs=[w.identity_hint])
    w.refresh_checkpoints.click(handlers.refresh_checkpoints, inputs=[w.checkpoint], outputs=[w.checkpoint, w.message])


# -- handlers -------------------------------------------------------------------------------------------

class TrainHandlers:
    """What the Train tab's events call; each returns updates keyed by component and never raises."""

    def __init__(self, backend: UiBackend, widgets: TrainTab):
        self.backend, self.w = backend, widgets

    def start(self, form: dict) -> dict:
        w = self.w
        try:
            params = self._params(form)
            uploads = read_uploads(form[w.photos])
            report, job, notes = self._prepare_and_queue(params, uploads)
            discard_uploads(form[w.photos])  # the identity holds its copies now; a refused start keeps them
        except Refusal as refusal:
            return {w.message: error_html(refusal.lines, "Training not started"),
                    w.report: refusal.report if refusal.report is not None else gr.update()}
        except FormError as error:
            return {w.message: error_html(validation_messages(error, TrainParams), "Training not started")}
        log.info("UI: queued training %s for %s (%d photos uploaded)", job.id, params.identity, len(uploads))
        note = " ".join([f"Training of {params.identity!r} queued (job {job.id}).", *(f"Note: {n}." for n in notes)])
        return {w.message: info_html(note), w.report: report, w.progress: progress_html(job, None), w.job_id: job.id}

    def watch(self, job_id: str | None) -> Iterator[dict]:
        """Yield the progress display whenever it changes, until the job has finished."""
        if not job_id:
            yield {self.w.progress: gr.update()}
            return
        shown = None
        while True:
            try:
                job = self.backend.runner.get(job_id)
            except JobNotFoundError:
                yield {self.w.progress: IDLE_PROGRESS}
                return
            display = progress_html(job, latest_identity_score(job))
            if display != shown:
                shown = display
                yield {self.w.progress: display}
            if job.state in FINISHED_STATES:
                return
            time.sleep(self.backend.poll_seconds)

    def resume(self, job_id: str | None) -> dict:
        """The page's own job while it runs, else the newest running training (e.g. after a reload)."""
        job = self._job(job_id)
        if job is None or job.state in FINISHED_STATES:
            job = self.backend.latest_active_training() or job
        return {self.w.job_id: job.id if job is not None else None}

    def cancel(self, job_id: str | None) -> dict:
        job = self._job(job_id)
        if job is None or job.state in FINISHED_STATES:
            return {self.w.message: info_html("No training of this page is running.")}
        job = self.backend.runner.cancel(job.id)
        return {self.w.message: info_html(f"Cancelling the training of {job.identity!r} (job {job.id}); "
                                          "its last checkpoint is kept.")}

    def retry(self, job_id: str | None, identity: str | None) -> dict:
        """Queue the page's failed or cancelled training again (without one: the newest such training of the
        identity named in the form); it resumes from its last checkpoint."""
        w = self.w
        job = self._job(job_id) or self._latest_retryable((identity or "").strip())
        if job is None:
            return {w.message: info_html("No failed or cancelled training to retry on this page."),
                    w.progress: gr.update(), w.job_id: gr.update()}
        try:
            job = self.backend.services.training.retry(job.id)
        except (JobStateError, JobStoreError, JobNotFoundError) as error:
            return {w.message: error_html(str(error), "Training not retried"), w.progress: gr.update(),
                    w.job_id: gr.update()}
        log.info("UI: queued training %s for %s again", job.id, job.identity)
        return {w.message: info_html(f"Training of {job.identity!r} queued again (job {job.id}); it resumes from "
                                     "its last checkpoint."), w.progress: progress_html(job, None), w.job_id: job.id}

    def _latest_retryable(self, identity: str) -> Job | None:
        found = [job for job in self.backend.runner.jobs()
                 if job.kind == "train" and identity in job.identities and job_status(job)["retryable"]]
        return max(found, key=lambda job: job.created) if identity and found else None

    def check_identity(self, identity: str) -> dict:
        """A hint under the name as soon as the field is left: refused, or already trained."""
        identity = (identity or "").strip()
        if not identity:
            return {self.w.identity_hint: ""}
        try:
            paths = identity_paths(identity, self.backend.root)
        except IdentityError as error:
            return {self.w.identity_hint: error_html(f"Identity name (identity): {error}")}
        if paths.dataset_layout().manifest.is_file():
            return {self.w.identity_hint: info_html(f"{identity!r} exists: new photos replace its photos; "
                                                    "without photos, Start trains it again from the prepared ones.")}
        return {self.w.identity_hint: ""}

    def refresh_checkpoints(self, current: str | None) -> dict:
        try:
            choices = self.backend.list_checkpoints()
        except PortraitError as error:
            return {self.w.checkpoint: gr.update(), self.w.message: error_html(f"Base checkpoint: {error}")}
        value = current if current in choices else self.backend.first_checkpoint(choices)
        return {self.w.checkpoint: gr.update(choices=choices, value=value), self.w.message: ""}

    def prefill(self, identity: str | None) -> dict:
        """The form set up to train `identity` again (the Identities tab's Re-train)."""
        w = self.w
        report = stored_report_html(identity, self.backend.root) if identity else ""
        note = (f"Start trains {identity!r} again from its prepared photos; upload photos to replace them first. "
                "Pick the base checkpoint and parameters above.")
        return {w.identity: identity or "", w.photos: None, w.report: report, w.message: info_html(note)}

    # ---- steps ---------------------------------------------------------------------------------------
    def _params(self, form: dict) -> TrainParams:
        identity = (form[self.w.identity] or "").strip()
        try:
            validate_identity_id(identity)
        except IdentityError as error:
            raise Refusal(f"Identity name (identity): {error}") from error
        base_model = self._base_model(form[self.w.checkpoint])
        try:
            return build_params(TrainParams, widget_values(self.w.advanced, form), identity=identity,
                                base_model=base_model)
        except (ValidationError, FormError) as error:
            raise Refusal(validation_messages(error, TrainParams)) from error

    def _base_model(self, name: str | None) -> str | None:
        # Empty: the host's current checkpoint (the one selected in the WebUI, the served one standalone);
        # the TrainingService decides, for this tab and the HTTP API alike.
        return name or None

    def _prepare_and_queue(self, params: TrainParams, uploads: list[UploadedPhoto]) -> tuple[str, Job, list[str]]:
        photos = [(upload.file, upload.data) for upload in uploads]
        try:
            started = self.backend.services.training.start(params, photos)
        except IdentityBusyError as error:
            raise Refusal(str(error)) from error
        except NoUsablePhotosError as error:
            raise Refusal(str(error), report_html(error.report.to_json(), uploads)) from error
        except ModelUnavailableError as error:
            raise Refusal(f"Face models are not available: {error}") from error
        except DatasetMissingError as error:
            raise Refusal(f"Photos: none uploaded, and {params.identity!r} has no prepared photos to train "
                          "again from; upload 5–20 photos") from error
        except CheckpointError as error:
            raise Refusal(f"Base checkpoint (base_model): {error}") from error
        except (IdentityError, JobStoreError) as error:
            raise Refusal(str(error)) from error
        if started.report is not None:
            report = report_html(started.report.to_json(), uploads)
        else:
            report = stored_report_html(params.identity, self.backend.root)
        return report, started.job, started.notes

    def _job(self, job_id: str | None) -> Job | None:
        if not job_id:
            return None
        try:
            return self.backend.runner.get(job_id)
        except JobNotFoundError:
            return None


# -- uploads --------------------------------------------------------------------------------------------

def read_uploads(files, limits: UploadLimits | None = None) -> list[UploadedPhoto]:
    """The photos of a gr.File(file_count="multiple") value: temp-file objects (Gradio 3) or paths (Gradio 4)."""
    limits = limits or UploadLimits()
    files = [] if files is None else list(files) if isinstance(files, list | tuple) else [files]
    if len(files) > limits.max_photos:
        raise FormError("photos", f"{len(files)} photos uploaded; at most {limits.max_photos} at a time")
    uploads = []
    for index, item in enumerate(files):
        path = Path(getattr(item, "name", item))
        original = Path(getattr(item, "orig_name", None) or path.name).name
        if not path.is_file():
            raise FormError("photos", f"{original} is no longer on the server (an upload is used once); "
                                      "upload it again")
        if path.stat().st_size > limits.max_photo_bytes:
            raise FormError("photos", f"{original} is larger than {limits.max_photo_bytes // 1_000_000} MB")
        uploads.append(UploadedPhoto(original, safe_photo_name(index, original), path.read_bytes(), path))
    return uploads


# -- views ----------------------------------------------------------------------------------------------

def report_html(report: dict, uploads: list[UploadedPhoto] | None = None, photos_dir: Path | None = None) -> str:
    """The preparation report as a table: thumbnail, photo, kept or rejected, why, scores."""
    by_file = {upload.file: upload for upload in uploads or []}
    rows = []
    for entry in report.get("photos", []):
        upload = by_file.get(entry["file"])
        source = upload.path if upload else (photos_dir / entry["file"] if photos_dir else None)
        rows.append(_report_row(entry, upload.name if upload else entry["file"], source,
                                reference=entry["file"] == report.get("reference")))
    kept = sum(1 for entry in report.get("photos", []) if entry.get("kept"))
    summary = f"Kept {kept} of {len(rows)} photos" + (" for training." if kept else ".")
    header = "".join(f"<th>{title}</th>" for title in ("", "Photo", "Result", "Why", "Identity", "Frontal"))
    return (f'<div class="portrait-report"><p class="portrait-report-summary">{summary}</p>'
            f'<table class="portrait-report-table"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _report_row(entry: dict, name: str, source: Path | None, *, reference: bool) -> str:
    thumbnail = thumbnail_data_uri(source) if source is not None else None
    image = f'<img class="portrait-thumb" src="{thumbnail}" alt="">' if thumbnail else ""
    verdict = ("kept (reference)" if reference else "kept") if entry.get("kept") else "rejected"
    if entry.get("kept") and entry.get("enhanced"):
        verdict += ", small face super-resolved"
    css = "portrait-kept" if entry.get("kept") else "portrait-rejected"
    cells = [image, html.escape(name), verdict, html.escape(entry.get("reason") or ""),
             _score(entry.get("identity_score")), _score(entry.get("frontal_score"))]
    return f'<tr class="{css}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _score(value) -> str:
    return "" if value is None else f"{float(value):.3f}"


def stored_report_html(identity: str, root: Path) -> str:
    """The report of the identity's current photos ("" when it has none)."""
    try:
        paths = identity_paths(identity, root)
        report = read_json(paths.report)
    except IdentityError:
        return ""
    return report_html(report, photos_dir=paths.photos)


def progress_html(job: Job, identity_score: float | None) -> str:
    """A progress bar with the phase, step, ETA and the latest identity score of a training job."""
    status = job_status(job)
    fraction = status["fraction"] if status["fraction"] is not None else 0.0
    progress = status["progress"]
    if progress.get("phase") == "encoding" and progress.get("total"):  # the bar fills once per phase
        fraction = min((progress.get("step") or 0) / progress["total"], 1.0)
    parts = [_state_label(job, progress)]
    if progress.get("total") and job.state not in (QUEUED,):
        parts.append(f"step {progress.get('step') or 0}/{progress['total']}")
    if status["eta_s"] is not None:
        parts.append(f"ETA {eta_text(status['eta_s'])}")
    if progress.get("loss") is not None and job.state not in FINISHED_STATES:
        parts.append(f"loss {progress['loss']:.4f}")
    if identity_score is not None:
        parts.append(f"identity score {identity_score:.3f}")
    text = " · ".join(html.escape(part) for part in parts)
    return (f'<div class="portrait-progress portrait-{job.state}" data-job="{html.escape(job.id)}">'
            f'<div class="portrait-progress-track"><div class="portrait-progress-fill" '
            f'style="width: {fraction * 100:.1f}%"></div></div>'
            f'<div class="portrait-progress-text">{text}</div></div>')


def _state_label(job: Job, progress: dict) -> str:
    if job.state == QUEUED:
        return f"{job.identity}: queued, waiting for the GPU"
    if job.state == DONE:
        lora = Path(job.result_path).stem if job.result_path else job.identity
        return f"{job.identity}: done, LoRA {lora!r} saved"
    if job.state == FAILED:
        return f"{job.identity}: failed: {job.error or 'the trainer stopped'}"
    if job.state in FINISHED_STATES:
        return f"{job.identity}: {job.state}"
    phase = progress.get("phase")
    return f"{job.identity}: {PHASE_LABELS.get(phase, phase or 'starting')}"


def latest_identity_score(job: Job) -> float | None:
    """The newest identity score the trainer reported (validation lines are followed by plain step lines,
    so the last line alone seldom has one)."""
    try:
        lines = (Path(job.output_dir) / "progress.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"identity_score"' not in line:
            continue
        try:
            value = json.loads(line).get("identity_score")
        except ValueError:
            continue
        if value is not None:
            return float(value)
    return None
