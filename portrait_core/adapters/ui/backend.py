"""What the tabs need from their host: the job runner, the generation service, folders, and WebUI hooks.

The WebUI and the standalone app build the same tabs; they differ only in the `UiBackend` they pass.
Nothing here imports the WebUI: the script hands its modules in (`webui_send_to_buttons(infotext_utils)`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from portrait_core.config import settings
from portrait_core.jobs import QUEUED, RUNNING, Job, JobRunner
from portrait_core.log import get_logger

log = get_logger("ui")

BUILTIN_TEMPLATES_DIR = Path(__file__).resolve().parents[3] / "templates"
USER_TEMPLATES_SUBDIR = "templates"
SEND_TO_TABS = ("img2img", "inpaint", "extras")

# send_to_buttons(results_gallery, infotext_textbox): called inside the Generate tab's layout; creates the
# "Send to ..." buttons there and binds them to the gallery's selected image and its infotext.
SendToButtons = Callable[[gr.Gallery, gr.Textbox], None]


def default_template_dirs() -> list[Path]:
    """The built-in templates, then the user's own folder (`<PORTRAIT_HOME>/templates`)."""
    return [BUILTIN_TEMPLATES_DIR, settings().home / USER_TEMPLATES_SUBDIR]


@dataclass
class WebUiHooks:
    """What only the WebUI can fill in. `send_to_buttons`: see `webui_send_to_buttons`."""

    send_to_buttons: SendToButtons | None = None


@dataclass
class UiBackend:
    """Everything the tabs call. Only `runner` and `generation` are required.

    - `generation()` gives the GenerationService (built on first use, then kept: it holds the loaded models).
    - `identities_root`: where identities live (None: the settings' folder at call time); must be the
      service's root too.
    - `template_dirs()`: folders of template images for the gallery, listed each time it is refreshed.
    - `checkpoints()`: names for the base-checkpoint dropdown (None: the generation host's `checkpoints()`,
      asked only when the user refreshes the list); `checkpoint_path(name)` turns a name into the
      TrainParams.base_model the trainer gets (WebUI: `checkpoints_list[title].filename`);
      `default_checkpoint()` is the dropdown's first value.
    - `gpu_lock`: held while photos are prepared (face models may run on the GPU); the WebUI's queue_lock.
    - `generation_session()`: a context around one Generate click; default: `gpu_lock`. In the WebUI give
      the WebUIHost's `session` (it takes queue_lock itself and drives the WebUI's progress and Interrupt).
    - `initial_values`: starting values of parameter widgets by field name (e.g. WebUI settings).
    """

    runner: JobRunner
    generation: Callable[[], Any]
    identities_root: Path | None = None
    template_dirs: Callable[[], Sequence[Path]] = default_template_dirs
    checkpoints: Callable[[], Sequence[str]] | None = None
    checkpoint_path: Callable[[str], str] = str
    default_checkpoint: Callable[[], str | None] | None = None
    gpu_lock: AbstractContextManager = field(default_factory=threading.Lock)
    generation_session: Callable[[], AbstractContextManager] | None = None
    initial_values: dict[str, Any] = field(default_factory=dict)
    webui: WebUiHooks | None = None
    poll_seconds: float = 1.0

    @property
    def root(self) -> Path:
        return Path(self.identities_root) if self.identities_root is not None else settings().identities_dir

    @property
    def in_webui(self) -> bool:
        return self.webui is not None

    def list_checkpoints(self, *, ask_host: bool = True) -> list[str]:
        """Names for the dropdown; the host is asked only when `ask_host` (building it may load models)."""
        if self.checkpoints is not None:
            return list(self.checkpoints())
        if not ask_host:
            return []
        return list(self.generation().generator.host.checkpoints())

    def first_checkpoint(self, choices: Sequence[str]) -> str | None:
        preferred = self.default_checkpoint() if self.default_checkpoint is not None else None
        if preferred in choices:
            return preferred
        return choices[0] if choices else None

    def active_job(self, identity: str) -> Job | None:
        """The identity's queued or running job, if any (as the HTTP API refuses a second one)."""
        return next((job for job in self.runner.jobs()
                     if job.identity == identity and job.state in (QUEUED, RUNNING)), None)

    def latest_active_training(self) -> Job | None:
        active = [job for job in self.runner.jobs() if job.kind == "train" and job.state in (QUEUED, RUNNING)]
        return max(active, key=lambda job: job.created) if active else None

    def generation_context(self) -> AbstractContextManager:
        return self.generation_session() if self.generation_session is not None else self.gpu_lock

    def interrupt_generation(self) -> bool:
        """Ask the host to stop its current diffusion call; False when there is nothing to interrupt."""
        service = self.generation()
        interrupt = getattr(service.generator.host, "interrupt", None)
        if interrupt is None:
            return False
        interrupt()
        return True


def webui_send_to_buttons(infotext_utils) -> SendToButtons:
    """The WebUI's "Send to img2img / inpaint / extras" for the results gallery, from its
    `modules.infotext_utils` (1.7+; `modules.generation_parameters_copypaste` before), handed in by the script.

    The WebUI connects registered bindings after every tab is built (`connect_paste_params_buttons`): the
    selected gallery image goes to the target tab, and the infotext fills its fields (not for extras).
    """

    def add_buttons(gallery: gr.Gallery, infotext: gr.Textbox) -> None:
        for tab in SEND_TO_TABS:
            button = gr.Button(f"Send to {tab}", elem_id=f"portrait-send-to-{tab}",
                               elem_classes=["portrait-send-to"])
            binding = infotext_utils.ParamBinding(paste_button=button, tabname=tab,
                                                  source_text_component=infotext,
                                                  source_image_component=gallery)
            infotext_utils.register_paste_params_button(binding)

    return add_buttons


