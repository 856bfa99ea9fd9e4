"""Portraits of identities from templates, now or as a queued job: what every door calls.

The service keeps the host and the face analyzer between calls (a second portrait loads nothing), checks
that each identity's LoRA fits the checkpoint in use before anything runs (another family is refused,
another base of the same family gets a note), and runs every portrait inside one host session, so the
host serialises concurrent callers and a cancelled job interrupts only its own turn.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from portrait_core.errors import ParameterError
from portrait_core.generate.identity import IdentityAssets, load_identity, prefer_trained_face
from portrait_core.generate.pipeline import PortraitGenerator, PortraitResult, check_template_size
from portrait_core.generate.results import infotext, save_results
from portrait_core.hosts.base import Host, HostSession
from portrait_core.jobs import Job, JobRunner, TaskContext
from portrait_core.log import get_logger
from portrait_core.params import GenerateParams
from portrait_core.services.identities import IdentityService
from portrait_core.services.loras import LoraInfo, LoraMismatchError, lora_fit_note, read_lora_info
from portrait_core.services.workspace import Workspace

log = get_logger("generation")

Templates = Sequence[tuple[str, Image.Image]]


class GenerationService:
    """`host()` gives the host (built on first use, then kept); `analyzer` the face models (default: the best
    installed backend, loaded on first use)."""

    def __init__(self, workspace: Workspace, identities: IdentityService, runner: JobRunner,
                 host: Callable[[], Host], *, analyzer=None):
        self.workspace, self.identities, self.runner = workspace, identities, runner
        self._host = host
        self._analyzer = analyzer
        self._generator: PortraitGenerator | None = None
        self._generator_guard = threading.Lock()
        self._assets: dict[tuple, IdentityAssets] = {}

    @property
    def host(self) -> Host:
        return self._host()

    @property
    def generator(self) -> PortraitGenerator:
        with self._generator_guard:
            if self._generator is None:
                if self._analyzer is None:
                    from portrait_core.faces import get_face_analyzer

                    self._analyzer = get_face_analyzer("auto")
                self._generator = PortraitGenerator(self.host, self._analyzer)
            return self._generator

    # ---- identities ---------------------------------------------------------------------------------
    def identity(self, identity: str) -> IdentityAssets:
        """What generation needs of an identity (cached until its photos or its LoRA change); IdentityError or
        IdentityNotReadyError naming what is missing."""
        paths = self.workspace.identity(identity)
        lora = self.workspace.lora_file(identity)
        key = (paths.id, _mtime(lora), _mtime(paths.dataset_layout().reference_info), _mtime(paths.folder /
                                                                                             "face_reference.png"))
        if key not in self._assets:
            assets = load_identity(paths.id, root=self.workspace.identities, lora_dir=self.workspace.loras)
            self._assets[key] = prefer_trained_face(assets, paths.folder, self.generator.analyzer)
        return self._assets[key]

    def lora_notes(self, identities: Sequence[str]) -> list[str]:
        """Notes on LoRAs trained on another base of the checkpoint's family; LoraMismatchError (naming both)
        for a LoRA of another family. Identities without a LoRA pass (they render tuning-free)."""
        checkpoint = self.host.current_checkpoint()
        notes = []
        for identity in dict.fromkeys(identities):
            lora = self.workspace.lora_file(identity)
            note = lora_fit_note(read_lora_info(lora), checkpoint) if lora.is_file() else None
            if note:
                notes.append(note)
        return notes

    def check(self, params: GenerateParams) -> tuple[list[str], list[IdentityAssets]]:
        """Everything that can be refused before a diffusion step runs: an unknown or unprepared identity, a
        LoRA of another family, an identity this host cannot render (no LoRA, no image prompt). Returns the
        notes to show and the identities' assets."""
        check_sampler(self.host, params.sampler)
        notes = self.lora_notes(params.identities)
        identities = [self.identity(name) for name in params.identities]
        for assets in identities:
            self.generator.check_ready(assets, params)
        return notes, identities

    def lora_fit(self, lora: LoraInfo) -> tuple[bool, str | None]:
        """Whether `lora` can be used with the checkpoint in use, and what to tell the user about it."""
        try:
            return True, lora_fit_note(lora, self.host.current_checkpoint())
        except LoraMismatchError as error:
            return False, str(error)

    # ---- now ----------------------------------------------------------------------------------------
    def generate(self, params: GenerateParams, templates: Templates) -> list[tuple[PortraitResult, str]]:
        """Every template x seed, each result with its infotext; best identity score first per template."""
        _check_template_sizes(params, templates)
        notes, identities = self.check(params)
        outputs = []
        with self.host.session("portrait studio: generate"):
            checkpoint = self.host.current_checkpoint()
            model_name = checkpoint.name if checkpoint is not None else ""
            prompt = self.generator.prompt(identities[0], params)
            for name, template in templates:
                for result in self.generator.generate(template, identities, params, template_name=name):
                    result.notes[:0] = notes
                    outputs.append((result, infotext(result, params, prompt, model_name)))
        return outputs

    # ---- as a job -----------------------------------------------------------------------------------
    def submit(self, params: GenerateParams, templates: Templates) -> Job:
        """Queue the generation behind the other jobs; it counts as active for every identity it uses.
        Everything that can be refused (unknown identity, a LoRA of another family) is refused now."""
        output_dir = self.workspace.generations / uuid.uuid4().hex[:12]
        templates = list(templates)

        def task(context: TaskContext) -> Path:
            context.progress("generating", step=0, total=len(templates) * params.batch)
            with self.host.session("portrait studio: generate (job)") as session, cancel_watch(context, session):
                outputs = self.generate(params, templates)
            return save_results(outputs, output_dir)

        _check_template_sizes(params, templates)  # a template too large is refused now, not in the job
        with self.identities.exclusive(*params.identities):
            self.check(params)
            return self.runner.submit_task("generate", params.identities, task, output_dir)

    def interrupt(self) -> None:
        """What an Interrupt button does: stop the host's running call (whoever started it)."""
        self.host.interrupt()


def check_sampler(host: Host, sampler: str, where: str = "sampler") -> None:
    """ParameterError unless `host` offers `sampler` (inside the WebUI: its own list, which e.g. has no PNDM)."""
    offered = host.samplers()
    if sampler not in offered:
        raise ParameterError(f"{where}: {sampler!r} is not offered by this host; choose one of {', '.join(offered)}")


@contextmanager
def cancel_watch(context: TaskContext, session: HostSession) -> Iterator[None]:
    """While the block runs, a cancel request of the job interrupts the job's own host session."""
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(0.2):
            if context.cancelled():
                session.interrupt()
                return

    threading.Thread(target=watch, name="portrait-job-cancel", daemon=True).start()
    try:
        yield
    finally:
        finished.set()


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _check_template_sizes(params: GenerateParams, templates: Templates) -> None:
    for name, template in templates:
        check_template_size(template, params, name)
