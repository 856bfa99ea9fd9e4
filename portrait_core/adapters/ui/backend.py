"""What the tabs need from their host: the process's services, template folders, and WebUI hooks.

The WebUI and the standalone app build the same tabs on the same PortraitServices the HTTP routes use (one
job runner, one lock per identity, one host that owns the GPU); they differ only in the hooks they pass.
Nothing here imports the WebUI: the script hands its modules in (`webui_send_to_buttons(infotext_utils)`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from portrait_core.jobs import Job, JobRunner
from portrait_core.log import get_logger
from portrait_core.services.runtime import PortraitServices

log = get_logger("ui")

BUILTIN_TEMPLATES_DIR = Path(__file__).resolve().parents[3] / "templates"
USER_TEMPLATES_SUBDIR = "templates"
SEND_TO_TABS = ("img2img", "inpaint", "extras")

# send_to_buttons(results_gallery, infotext_textbox): called inside the Generate tab's layout; creates the
# "Send to ..." buttons there and binds them to the gallery's selected image and its infotext.
SendToButtons = Callable[[gr.Gallery, gr.Textbox], None]


@dataclass
class WebUiHooks:
    """What only the WebUI can fill in. `send_to_buttons`: see `webui_send_to_buttons`."""

    send_to_buttons: SendToButtons | None = None


@dataclass
class UiBackend:
    """Everything the tabs call. Only `services` is required.

    - `template_dirs()`: folders of template images for the gallery, listed each time it is refreshed
      (default: the built-in templates and `<home>/templates`).
    - `checkpoints()`: names for the base-checkpoint dropdown (None: the host's `checkpoints()`, asked only
      when the user refreshes the list); `default_checkpoint()` is the dropdown's first value. An empty
      choice trains the host's current checkpoint (the TrainingService decides, as for the HTTP API).
    - `initial_values`: starting values of parameter widgets by field name (e.g. WebUI settings).
    """

    services: PortraitServices
    template_dirs: Callable[[], Sequence[Path]] | None = None
    checkpoints: Callable[[], Sequence[str]] | None = None
    default_checkpoint: Callable[[], str | None] | None = None
    initial_values: dict[str, Any] = field(default_factory=dict)
    webui: WebUiHooks | None = None
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.template_dirs is None:
            home = self.services.workspace.home
            self.template_dirs = lambda: [BUILTIN_TEMPLATES_DIR, home / USER_TEMPLATES_SUBDIR]

    @property
    def root(self) -> Path:
        return self.services.workspace.identities

    @property
    def runner(self) -> JobRunner:
        return self.services.runner

    def generation(self):
        return self.services.generation

    @property
    def in_webui(self) -> bool:
        return self.webui is not None

    def list_checkpoints(self, *, ask_host: bool = True) -> list[str]:
        """Names for the dropdown; the host is asked only when `ask_host` (building it may load models)."""
        if self.checkpoints is not None:
            return list(self.checkpoints())
        if not ask_host:
            return []
        return list(self.services.host().checkpoints())

    def first_checkpoint(self, choices: Sequence[str]) -> str | None:
        preferred = self.default_checkpoint() if self.default_checkpoint is not None else None
        if preferred in choices:
            return preferred
        return choices[0] if choices else None

    def active_job(self, identity: str) -> Job | None:
        """The identity's queued or running job, if any (training, or a generation using it)."""
        return self.services.identities.busy_job(identity)

    def latest_active_training(self) -> Job | None:
        active = [job for job in self.runner.jobs() if job.kind == "train" and job.active]
        return max(active, key=lambda job: job.created) if active else None

    def generation_context(self, job: str = "Portrait Studio") -> AbstractContextManager:
        """One click's turn on the GPU: the host's session (in the WebUI it also drives progress/Interrupt;
        a `job` "task(...)" is the id the WebUI's progress bar on the page follows)."""
        return self.services.host().session(job)

    def interrupt_generation(self) -> None:
        """Ask the host to stop its current diffusion call (every host can: it is part of the protocol)."""
        self.services.generation.interrupt()


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


