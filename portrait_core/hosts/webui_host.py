"""WebUIHost: the Host protocol on a running A1111 WebUI (1.10.x).

Diffusion goes through `modules.processing` (img2img / txt2img + process_images), controls become
sd-webui-controlnet units (plain dicts) handed over through the `external_code` module the WebUI
already loaded, faces are restored by the WebUI's CodeFormer / GFPGAN, upscaling uses
`shared.sd_upscalers`, and every GPU call runs under the WebUI's `queue_lock` and `shared.state`.

This is the only module of portrait_core that imports the WebUI's `modules`, and only inside
functions: importing it outside the WebUI is harmless.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import urllib.error
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from portrait_core.core import imaging
from portrait_core.errors import (
    ControlError,
    GenerationInterrupted,
    InputImageError,
    LoraFileError,
    ModelUnavailableError,
    PortraitError,
)
from portrait_core.hosts.base import (
    CheckpointRef,
    Control,
    HostSession,
    LoraList,
    check_generation_size,
    check_inpaint_inputs,
)
from portrait_core.hosts.diffusers_host import LORA_NAME_CHARS
from portrait_core.log import get_logger

log = get_logger("webui_host")

# Where other extensions find ControlNet's public API: A1111's sd-webui-controlnet, then Forge's
# built-in copy. Never import it by file path: a second module copy fails ControlNet's own checks.
CONTROLNET_MODULES = ("internal_controlnet.external_code", "lib_controlnet.external_code")
MIN_CONTROLNET_API = 2  # dict units + update_cn_script_in_processing
TESTED_CONTROLNET_API = 3  # sd-webui-controlnet 1.1.455
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")  # what the built-in Lora extension lists
CONTROL_MODES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                 "control": "ControlNet is more important"}
# Unit fields older ControlNet versions may lack; dropped there instead of refusing the unit.
OPTIONAL_UNIT_FIELDS = frozenset({"save_detected_map", "pixel_perfect"})
# Preprocessors that read weights the ControlNet extension downloads on first use (fails offline).
ANNOTATOR_FILES = {"openpose_full": "openpose/body_pose_model.pth",
                   "ip-adapter_clip_sd15": "clip_vision/clip_h.pth",
                   "ip-adapter_clip_sdxl_plus_vith": "clip_vision/clip_h.pth"}
RESTORER_WEIGHTS = {"CodeFormer": "codeformer-v0.1.0.pth", "GFPGAN": "GFPGANv1.4.pth"}
RESTORE_FAILED_MESSAGE = "Unable to load face-restoration model"  # what face_restoration_utils logs


class WebUIError(PortraitError):
    """The WebUI did not do what it was asked (e.g. it returned no image)."""


@dataclass(frozen=True)
class UnitSpec:
    """One ControlNet unit of a control kind: its preprocessor and the model files it can use."""

    module: str
    models: tuple[str, ...]  # parts of model file names, best first (matched lower-case)
    threshold_a: float = -1
    threshold_b: float = -1
    spatial: bool = True  # an image aligned with the picture (resized to the output size)


@dataclass(frozen=True)
class ControlSpec:
    units: tuple[UnitSpec, ...]
    ready_module: str | None = "none"  # module for a ready-made map (Control.preprocessed); None: always preprocess
    download: str = "huggingface.co/lllyasviel/ControlNet-v1-1"


CONTROL_SPECS = {
    "sd15": {
        "canny": ControlSpec((UnitSpec("canny", ("control_v11p_sd15_canny", "sd15_canny"), 100, 200),)),
        "openpose": ControlSpec((UnitSpec("openpose_full", ("control_v11p_sd15_openpose", "sd15_openpose")),)),
        "tile": ControlSpec((UnitSpec("tile_resample", ("control_v11f1e_sd15_tile", "sd15_tile")),)),
        "color": ControlSpec((UnitSpec("t2ia_color_grid", ("t2iadapter_color_sd14v1", "coadapter-color")),),
                             download="huggingface.co/TencentARC/T2I-Adapter (models/t2iadapter_color_sd14v1.pth)"),
        "ip_adapter": ControlSpec((UnitSpec("ip-adapter_clip_sd15", (
            "ip-adapter-plus-face_sd15", "ip-adapter-plus_sd15", "ip-adapter_sd15"), spatial=False),),
            ready_module=None, download="huggingface.co/h94/IP-Adapter (models/)"),
    },
    "sdxl": {
        "canny": ControlSpec((UnitSpec("canny", ("diffusers_xl_canny", "xl_canny", "canny_sdxl", "canny-sdxl"),
                                       100, 200),), download="huggingface.co/lllyasviel/sd_control_collection"),
        "openpose": ControlSpec((UnitSpec("openpose_full", ("thibaud_xl_openpose", "xl_openpose", "openpose-sdxl")),),
                                download="huggingface.co/lllyasviel/sd_control_collection"),
        "tile": ControlSpec((UnitSpec("tile_resample", ("xl_tile", "tile_sdxl", "tile-sdxl")),),
                            download="huggingface.co/lllyasviel/sd_control_collection"),
        "ip_adapter": ControlSpec((UnitSpec("ip-adapter_clip_sdxl_plus_vith", (
            "ip-adapter-plus-face_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h", "ip-adapter_sdxl_vit-h"), spatial=False),),
            ready_module=None, download="huggingface.co/h94/IP-Adapter (sdxl_models/)"),
    },
}


@dataclass(frozen=True)
class PostprocessResult:
    """A face restoration or upscale as it really happened: `applied` is False when the WebUI fell
    back (missing weights) and handed back the image unprocessed or only resized; `note` says why."""

    image: Image.Image
    applied: bool
    note: str = ""


@dataclass
class _Request:
    """One diffusion call, validated before anything is queued."""

    prompt: str
    sampler: str
    scheduler: str
    units: list[dict] = field(default_factory=list)
    override_settings: dict = field(default_factory=dict)


class WebUIHost:
    """A Host on the running WebUI. Construct it inside the WebUI process (after start-up).

    `checkpoint`: a checkpoint title/name from checkpoints() to render with (None: the loaded one).
    `family`: "sd15" or "sdxl", which ControlNet models to look for (None: from the loaded model).
    `inpaint_only_masked`: the WebUI's "Only masked" inpaint area (renders the masked region at full
    size); default "Whole picture", as DiffusersHost does. `caller_holds_queue_lock`: the caller runs
    inside the WebUI's own GPU wrapper (wrap_gradio_gpu_call or `with queue_lock:` + state.begin()),
    so the host must neither take the non-reentrant lock again nor restart shared.state.
    """

    def __init__(self, *, checkpoint: str | None = None, family: str | None = None,
                 face_restorer: str = "CodeFormer", default_upscaler: str = "Lanczos",
                 inpaint_only_masked: bool = False, only_masked_padding: int = 32,
                 caller_holds_queue_lock: bool = False,
                 progress_callback: Callable[[int, int, str], None] | None = None):
        if face_restorer not in RESTORER_WEIGHTS:
            raise InputImageError(f"face_restorer {face_restorer!r}: choose one of {', '.join(RESTORER_WEIGHTS)}")
        if family not in (None, *CONTROL_SPECS):
            raise ControlError(f"family {family!r}: choose one of {', '.join(CONTROL_SPECS)}")
        self.checkpoint = checkpoint
        self._family = family
        self.face_restorer = face_restorer
        self.default_upscaler = default_upscaler
        self.inpaint_only_masked = inpaint_only_masked
        self.only_masked_padding = only_masked_padding
        self.caller_holds_queue_lock = caller_holds_queue_lock
        self._progress_callback = progress_callback
        self._local = threading.local()
        self._warned_api = False
        self.last_infotext = ""
        self.last_restore: PostprocessResult | None = None
        self.last_upscale: PostprocessResult | None = None

    # ---- Host protocol: diffusion ----------------------------------------------------------------------
    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str, negative: str = "", *,
                controls: Sequence[Control] = (), lora: LoraList = (), steps: int = 20,
                denoise: float = 0.45, cfg: float = 7.0, seed: int = 0, sampler: str = "Euler a",
                size: tuple[int, int] | None = None, mask_blur: int = 4) -> Image.Image:
        """Repaint the white part of `mask` with the WebUI's img2img; pixels away from it stay as they were."""
        mask, size = check_inpaint_inputs(image, mask, size, steps, denoise)
        work_image = image.convert("RGB").resize(size, Image.LANCZOS)
        work_mask = mask.resize(size, Image.NEAREST)
        request = self._prepare(prompt, controls, lora, sampler, size)
        fields = {"init_images": [work_image], "mask": work_mask, "mask_blur": int(mask_blur),
                  "inpainting_fill": 1,  # 1 = "original": start from the picture, not a flat fill
                  "inpaint_full_res": self.inpaint_only_masked,
                  "inpaint_full_res_padding": self.only_masked_padding,
                  "inpainting_mask_invert": 0, "resize_mode": 0, "denoising_strength": float(denoise)}
        generated = self._generate("img2img", request, negative=negative, steps=steps, cfg=cfg, seed=seed,
                                   size=size, fields=fields)
        # The WebUI overlays the original too, unless a user setting (overlay, colour correction) changes it.
        return imaging.feathered_composite(work_image, generated, work_mask, mask_blur)

    def txt2img(self, prompt: str, negative: str = "", *, controls: Sequence[Control] = (),
                lora: LoraList = (), steps: int = 20, cfg: float = 7.0, seed: int = 0,
                sampler: str = "Euler a", size: tuple[int, int] = (512, 512)) -> Image.Image:
        size = check_generation_size(size)
        request = self._prepare(prompt, controls, lora, sampler, size)
        return self._generate("txt2img", request, negative=negative, steps=steps, cfg=cfg, seed=seed, size=size,
                              fields={"enable_hr": False})

    # ---- Host protocol: post-processing ------------------------------------------------------------------
    def restore_faces(self, image: Image.Image, codeformer_weight: float = 0.7) -> Image.Image:
        """The WebUI's face restorer; raises ModelUnavailableError (naming the missing weights) when
        the WebUI could not load it and handed the image back unchanged. `last_restore` keeps the result."""
        result = self.restore_faces_result(image, codeformer_weight)
        if not result.applied:
            raise ModelUnavailableError(result.note)
        return result.image

    def restore_faces_result(self, image: Image.Image, codeformer_weight: float = 0.7,
                             restorer: str | None = None) -> PostprocessResult:
        """Like restore_faces, but never raises for missing weights: the result says what happened."""
        name = restorer or self.face_restorer
        if not 0.0 <= codeformer_weight <= 1.0:
            raise InputImageError(f"codeformer_weight {codeformer_weight} is outside 0–1")
        model = _face_restorer(name)
        if model is None:
            result = PostprocessResult(image, False, f"the WebUI has no {name} face restorer set up")
        else:
            with self.session("portrait: face restoration"):
                result = _run_restorer(model, name, image, codeformer_weight)
        self.last_restore = result
        return result

    def upscale(self, image: Image.Image, scale: float = 2.0, upscaler: str | None = None) -> Image.Image:
        """A WebUI upscaler by name (None: `default_upscaler`). Sizes come out floored to multiples of 8,
        as the WebUI makes them. A model that could not load is noted in `last_upscale`, and logged."""
        result = self.upscale_result(image, scale, upscaler)
        if not result.applied:
            log.warning("%s", result.note)
        return result.image

    def upscale_result(self, image: Image.Image, scale: float = 2.0, upscaler: str | None = None) -> PostprocessResult:
        if not scale > 0:
            raise InputImageError(f"upscale factor must be positive, got {scale}")
        data = _find_upscaler(upscaler or self.default_upscaler)
        source = image.convert("RGB")
        with self.session("portrait: upscale"):
            upscaled = data.scaler.upscale(source, scale, data.data_path)
        # A model upscaler that cannot load its weights leaves only the WebUI's final Lanczos resize.
        fell_back = data.data_path is not None and _same_pixels(upscaled, source.resize(upscaled.size, Image.LANCZOS))
        note = (f"upscaler {data.name!r} could not load its model ({data.data_path}); the WebUI only resized "
                "the image with Lanczos") if fell_back else ""
        self.last_upscale = PostprocessResult(upscaled, not fell_back, note)
        return self.last_upscale

    # ---- Host protocol: listings, progress ---------------------------------------------------------------
    def checkpoints(self) -> list[str]:
        from modules import sd_models

        return list(sd_models.checkpoints_list)

    def checkpoint_file(self, name: str) -> Path:
        """The file of a checkpoint as the WebUI lists it (title, name, or hash: its own aliases)."""
        return Path(self._checkpoint_info(name).filename)

    def current_checkpoint(self) -> CheckpointRef | None:
        """The checkpoint our calls render with: `checkpoint` if given, else the one selected in the WebUI
        (its settings' choice, else its first, as the WebUI itself picks). Read from the file's header,
        never by loading the model. None when the WebUI has no checkpoint at all."""
        from modules import sd_models
        from portrait_core.models.checkpoints.family import inspect_checkpoint

        try:
            info = self._checkpoint_info(self.checkpoint) if self.checkpoint else sd_models.select_checkpoint()
        except (FileNotFoundError, ModelUnavailableError):
            return None
        path = Path(info.filename)
        family = self._family or inspect_checkpoint(path).base_family
        return CheckpointRef(info.title, path, family, getattr(info, "shorthash", None))

    def _checkpoint_info(self, name: str):
        from modules import sd_models

        info = sd_models.checkpoint_aliases.get(name)
        if info is None:
            sd_models.list_models()  # a file added since start-up
            info = sd_models.checkpoint_aliases.get(name)
        if info is None:
            known = ", ".join(sd_models.checkpoints_list) or "none"
            raise ModelUnavailableError(f"checkpoint {name!r} is not in the WebUI's list (known: {known}); "
                                        f"put it in {sd_models.model_path}")
        return info

    def controlnet_models(self) -> list[str]:
        """The control kinds this WebUI can run now (every model found, every needed annotator present)."""
        external_code = self._controlnet_api(required=False)
        if external_code is None:
            return []
        available = external_code.get_models()
        return [kind for kind, spec in self._specs().items()
                if all(_match_model(unit.models, available) for unit in spec.units)
                and not _missing_annotators(external_code, [{"module": unit.module} for unit in spec.units
                                                            if spec.ready_module is None])]

    def webui_controlnet_models(self) -> list[str]:
        """ControlNet's own model list ("name [hash]"), for display."""
        external_code = self._controlnet_api(required=False)
        return [] if external_code is None else list(external_code.get_models())

    def lora_dir(self) -> Path:
        """The built-in Lora extension's folder (--lora-dir, default models/Lora)."""
        from modules import shared

        configured = getattr(shared.cmd_opts, "lora_dir", None)
        return Path(configured) if configured else Path(shared.models_path) / "Lora"

    def progress(self, step: int, total: int, text: str = "") -> None:
        """Pipeline-level progress onto the WebUI's progress bar: `total` diffusion calls planned, `step`
        done. Each call's process_images moves job_no on by one (as in the WebUI's img2img batch), and the
        bar adds the call's sampling steps, so the bar runs once from 0 to 100% over the whole job."""
        from modules import shared

        shared.state.job_count = max(int(total), 1)
        shared.state.job_no = int(step)
        shared.state.textinfo = text
        if self._progress_callback is not None:
            self._progress_callback(step, total, text)

    def interrupted(self) -> bool:
        from modules import shared

        return bool(shared.state.interrupted or getattr(shared.state, "stopping_generation", False))

    def interrupt(self) -> None:
        """What the WebUI's Interrupt button does (callable from any thread)."""
        from modules import shared

        shared.state.interrupt()

    # ---- queue lock and job ----------------------------------------------------------------------------
    @contextmanager
    def session(self, job: str = "portrait studio") -> Iterator[HostSession]:
        """Hold the WebUI's queue_lock and one shared.state job across several calls (e.g. both passes
        of a portrait): nothing else runs in between, and Interrupt stops the remaining calls.
        Nests within one thread; every GPU call opens one of its own when none is open."""
        current = getattr(self._local, "session", None)
        if current is not None:
            yield current
            return
        session = HostSession(job, self.interrupt)
        if self.caller_holds_queue_lock:  # the WebUI's own wrapper holds the lock and runs shared.state
            with self._active(session):
                yield session
            return
        from modules import call_queue, shared

        # The WebUI's task queue, as its own wrapper does: `job` "task(...)" is the id a page polls
        # /internal/progress with (the top progress bar); other callers get an id of their own.
        progress = _progress_module()
        task = job if TASK_ID.fullmatch(job) else (progress.create_task_id("portrait") if progress else None)
        if progress is not None:
            progress.add_task_to_queue(task)
        try:
            with call_queue.queue_lock:
                shared.state.begin(job=task or job)
                if progress is not None:
                    progress.start_task(task)
                try:
                    with self._active(session):
                        yield session
                finally:
                    shared.state.end()
        finally:
            if progress is not None:
                progress.finish_task(task)

    @contextmanager
    def training_turn(self, task: str) -> Iterator[WebUITrainingTurn]:
        """A training's turn: the WebUI's queue and shared.state for as long as its trainer runs, as one of
        the WebUI's own jobs. Its top progress bar (for `task`, a "task(...)" id), /sdapi/v1/progress and
        the console's "Total progress" follow the training; Interrupt stops it. The loaded checkpoint waits
        in RAM meanwhile (what /sdapi/v1/unload-checkpoint does), so the trainer has the GPU's memory; it
        goes back to the GPU afterwards. Other generations wait in the WebUI's queue until the turn ends."""
        from modules import sd_models

        with self.session(task):
            model = sd_models.model_data.sd_model  # never `shared.sd_model`: that would load one
            if model is not None:
                sd_models.unload_model_weights(model)
            turn = WebUITrainingTurn(self)
            try:
                yield turn
            finally:
                turn.close()
                if model is not None and sd_models.model_data.sd_model is model:
                    sd_models.send_model_to_device(model)

    @contextmanager
    def _active(self, session: HostSession) -> Iterator[None]:
        self._local.session = session
        session._set_active(True)
        try:
            yield
        finally:
            session._set_active(False)
            self._local.session = None

    def refresh_loras(self) -> None:
        """The built-in Lora extension's own refresh (what its "refresh" button and /sdapi/v1/refresh-loras
        call), found at run time; nothing where the extension is absent or disabled."""
        networks = sys.modules.get("networks")
        refresh = getattr(networks, "list_available_networks", None)
        if refresh is None:
            log.info("the WebUI's Lora extension is not loaded; a new LoRA shows after its refresh")
            return
        refresh()

    def samplers(self) -> list[str]:
        """The WebUI's own sampler list (what its txt2img dropdown shows), then the "NAME Scheduler" forms of
        ours it resolves (e.g. "DPM++ 2M Karras"): a name not here is refused before the queue is joined."""
        from modules import sd_samplers
        from portrait_core.params import SAMPLERS

        visible = list(sd_samplers.visible_sampler_names())
        return visible + [name for name in SAMPLERS if name not in visible and _resolves_sampler(name)]

    # ---- internals: a diffusion call -------------------------------------------------------------------
    def _prepare(self, prompt: str, controls: Sequence[Control], lora: LoraList, sampler: str,
                 size: tuple[int, int]) -> _Request:
        """Everything that can be refused is refused here, before the queue is joined."""
        sampler_name, scheduler = _webui_sampler(sampler)
        tags = [self._lora_tag(name, weight) for name, weight in lora]
        units = self._units(controls, size) if controls else []
        full_prompt = " ".join([prompt, *tags]) if tags else prompt
        overrides = self._override_settings(with_controls=bool(units))
        return _Request(full_prompt, sampler_name, scheduler, units, overrides)

    def _generate(self, task: str, request: _Request, *, negative: str, steps: int, cfg: float, seed: int,
                  size: tuple[int, int], fields: dict) -> Image.Image:
        from modules import processing, scripts

        is_img2img = task == "img2img"
        processing_class = (processing.StableDiffusionProcessingImg2Img if is_img2img
                            else processing.StableDiffusionProcessingTxt2Img)
        runner = scripts.scripts_img2img if is_img2img else scripts.scripts_txt2img
        with self.session(f"portrait: {task}"):
            self._raise_if_interrupted(steps)
            common = self._processing_fields(task, request, negative=negative, steps=steps, cfg=cfg, seed=seed,
                                             size=size)
            p = processing_class(**common, **fields)
            with _script_ranges_restored(runner), _unsaved_settings_restored(request.override_settings), closing(p):
                self._attach_scripts(p, runner, request.units)
                try:
                    processed = processing.process_images(p)
                except urllib.error.URLError as error:  # a model the WebUI fetches on first use, offline
                    raise WebUIError(
                        f"the WebUI tried to download a model during this call and could not ({error.reason}); "
                        "its console names the file. Put the file where it says, or switch off what needs it "
                        "(Settings → Live previews → Live preview method: Approx cheap)") from error
            self._raise_if_interrupted(steps)
        return self._generated_image(processed, expected_maps=len(request.units))

    @staticmethod
    def _processing_fields(task: str, request: _Request, *, negative: str, steps: int, cfg: float, seed: int,
                           size: tuple[int, int]) -> dict:
        from modules import shared

        return {"prompt": request.prompt, "negative_prompt": negative, "seed": int(seed), "subseed": -1,
                "subseed_strength": 0, "sampler_name": request.sampler, "scheduler": request.scheduler,
                "batch_size": 1, "n_iter": 1, "steps": int(steps), "cfg_scale": float(cfg),
                "width": size[0], "height": size[1], "restore_faces": False, "tiling": False,
                # Portrait Studio keeps its own results; the WebUI's output folders and grids stay untouched.
                "do_not_save_samples": True, "do_not_save_grid": True,
                "outpath_samples": getattr(shared.opts, f"outdir_{task}_samples", None),
                "outpath_grids": getattr(shared.opts, f"outdir_{task}_grids", None),
                "override_settings": dict(request.override_settings),
                "override_settings_restore_afterwards": True}

    def _attach_scripts(self, p, runner, units: list[dict]) -> None:
        """The always-on scripts with their defaults, and our ControlNet units in ControlNet's slot."""
        if runner is None:
            if units:
                raise ControlError("the WebUI's img2img/txt2img scripts are not set up yet; ControlNet cannot run")
            return
        p.is_api = True  # first: otherwise the built-in Seed/Sampler scripts overwrite seed, steps, sampler
        p.scripts = runner
        p.script_args = tuple(_default_script_args(runner))
        external_code = self._controlnet_api(required=bool(units))
        if external_code is None:
            return
        if external_code.find_cn_script(runner) is None:
            if units:
                raise ControlError("sd-webui-controlnet is installed but its script is not active for this tab; "
                                   "enable the extension in the Extensions tab and restart the WebUI")
            return
        _put_units(p, runner, units, external_code)
        _check_units_attached(p, external_code, len(units))

    def _generated_image(self, processed, expected_maps: int) -> Image.Image:
        images = list(processed.images)[processed.index_of_first_image:]
        if not images:
            raise WebUIError("the WebUI returned no image; its console says why")
        generated, extras = images[0], images[1:]
        if len(extras) < expected_maps:
            raise ControlError(
                f"ControlNet applied {len(extras)} of the {expected_maps} requested units: the WebUI generated "
                "without control, so the image was discarded. The WebUI console names the cause (a model that "
                "failed to load, preprocessor weights that could not be downloaded offline, a rejected unit)")
        self.last_infotext = str(getattr(processed, "info", ""))
        return generated.convert("RGB")

    def _raise_if_interrupted(self, steps: int) -> None:
        from modules import shared

        if self.interrupted():
            # The WebUI resets its step counter after each image, so this may read 0.
            raise GenerationInterrupted(int(shared.state.sampling_step or 0), int(steps))

    def _override_settings(self, *, with_controls: bool) -> dict:
        """Settings for this call only (process_images restores them): the checkpoint, and user options
        that would add images to the result or repaint the background."""
        from modules import shared

        wanted = {"return_mask": False, "return_mask_composite": False, "img2img_color_correction": False,
                  "overlay_inpaint": True, **self._checkpoint_setting()}
        if with_controls:
            wanted["control_net_no_detectmap"] = False  # the detected maps are the proof each unit ran
        wanted.update(self._preview_setting())
        opts = shared.opts
        # process_images' opts.set() fails on an unknown key; a value already in place needs no override.
        return {key: value for key, value in wanted.items()
                if key in opts.data_labels and getattr(opts, key, None) != value}

    def _preview_setting(self) -> dict:
        """The live-preview method for our calls. With "Approx NN" the WebUI loads its preview network before
        sampling and downloads it when missing (SDXL's vaeapprox-sdxl.pt is not shipped), which fails
        offline; our calls then use "Approx cheap", which needs no file. The user's setting stays as it was."""
        from modules import paths_internal, shared

        if not getattr(shared.opts, "live_previews_enable", False) or \
                getattr(shared.opts, "show_progress_type", None) != "Approx NN":
            return {}
        name = "vaeapprox-sdxl.pt" if self.family == "sdxl" else "model.pt"
        folders = (Path(paths_internal.models_path), Path(paths_internal.script_path) / "models")
        if any((folder / "VAE-approx" / name).exists() for folder in folders):
            return {}
        return {"show_progress_type": "Approx cheap"}

    def _checkpoint_setting(self) -> dict:
        if not self.checkpoint:
            return {}
        # process_images silently ignores an override it cannot find in checkpoint_aliases.
        return {"sd_model_checkpoint": self._checkpoint_info(self.checkpoint).title}

    # ---- internals: LoRA ---------------------------------------------------------------------------------
    def _lora_tag(self, name, weight) -> str:
        """`<lora:name:weight>` for a LoRA the WebUI will find; refused when it would not."""
        weight = float(weight)
        if not math.isfinite(weight):
            raise LoraFileError(f"LoRA {name!r}: weight {weight} is not a number")
        return f"<lora:{self._lora_name(name)}:{weight:g}>"

    def _lora_name(self, name) -> str:
        folder = self.lora_dir()
        if isinstance(name, Path):
            # The WebUI lists every LoRA under its folder (sub-folders too) by file stem.
            path = name.resolve()
            if not (path.is_file() and path.suffix in LORA_SUFFIXES and path.is_relative_to(folder.resolve())):
                raise LoraFileError(f"LoRA {name} must be a {'/'.join(LORA_SUFFIXES)} file inside the WebUI's LoRA "
                                    f"folder {folder}: the WebUI looks LoRAs up by name there only")
            return _checked_lora_name(path.stem, folder)
        stem = _checked_lora_name(name, folder)
        stem = next((stem[: -len(suffix)] for suffix in LORA_SUFFIXES if stem.endswith(suffix)), stem)
        if not any((folder / f"{stem}{suffix}").is_file() for suffix in LORA_SUFFIXES):
            # The WebUI would log "Couldn't find network" and render without it.
            raise LoraFileError(f"LoRA {name!r} not found: expected {folder / (stem + '.safetensors')}")
        return stem

    # ---- internals: ControlNet -------------------------------------------------------------------------
    def _controlnet_api(self, *, required: bool):
        """sd-webui-controlnet's external_code as the WebUI loaded it, its API version checked."""
        external_code = next((sys.modules[name] for name in CONTROLNET_MODULES if name in sys.modules), None)
        if external_code is None:
            if required:
                raise ControlError("ControlNet is not installed in this WebUI: install sd-webui-controlnet from "
                                   "the Extensions tab (Forge has it built in) and restart")
            return None
        version = getattr(external_code, "get_api_version", lambda: None)()
        if version is None or version < MIN_CONTROLNET_API:
            if not required:
                return None
            raise ControlError(f"sd-webui-controlnet API version {version} is too old: Portrait Studio needs "
                               f"{MIN_CONTROLNET_API} or newer; update the extension")
        if version > TESTED_CONTROLNET_API and not self._warned_api:
            self._warned_api = True
            log.warning("sd-webui-controlnet API version %s is newer than the tested %s", version,
                        TESTED_CONTROLNET_API)
        return external_code

    def _specs(self) -> dict[str, ControlSpec]:
        return CONTROL_SPECS[self.family]

    @property
    def family(self) -> str:
        if self._family is None:
            from modules import shared

            return "sdxl" if getattr(getattr(shared, "sd_model", None), "is_sdxl", False) else "sd15"
        return self._family

    def _units(self, controls: Sequence[Control], size: tuple[int, int]) -> list[dict]:
        """Unit dicts for every control, models resolved and units checked, or one error naming all gaps."""
        external_code = self._controlnet_api(required=True)
        specs = self._specs()
        unknown = [c.kind for c in controls if c.kind not in specs]
        if unknown:
            raise ControlError(f"no {self.family} ControlNet for {', '.join(unknown)} in Portrait Studio; "
                               f"{self.family} runs {', '.join(specs)}")
        available = external_code.get_models()
        if any(not _match_model(u.models, available) for c in controls for u in specs[c.kind].units):
            available = external_code.get_models(update=True)  # files added since start-up
        _refuse_missing_models(controls, specs, available, self.family)
        units = [_unit_dict(control, unit, specs[control.kind], _match_model(unit.models, available), size)
                 for control in controls for unit in specs[control.kind].units]
        missing = _missing_annotators(external_code, units)
        if missing:
            raise ControlError("ControlNet preprocessor weights missing (the extension downloads them on first use, "
                               "which fails offline): " + "; ".join(missing) +
                               ". Put the files there, or pass a ready-made map (Control(preprocessed=True))")
        return [_checked_unit(external_code, unit) for unit in units]


# ---- module helpers (no state) ---------------------------------------------------------------------------
class WebUITrainingTurn:
    """What a running training tells the WebUI (see `WebUIHost.training_turn`): its steps as the job's
    progress (job_no of job_count, as the top bar and /sdapi/v1/progress read them) and on the console's
    total bar, one tick per step."""

    def __init__(self, host: WebUIHost):
        self._host = host
        self._ticked = 0

    def progress(self, step: int, total: int, text: str) -> None:
        from modules import shared

        self._host.progress(step, total, text)
        tqdm = getattr(shared, "total_tqdm", None)
        if tqdm is None or total <= 0:
            return
        tqdm.updateTotal(total)
        while self._ticked < step:
            tqdm.update()
            self._ticked += 1

    def interrupted(self) -> bool:
        return self._host.interrupted()

    def close(self) -> None:
        from modules import shared

        tqdm = getattr(shared, "total_tqdm", None)
        if tqdm is not None:
            tqdm.clear()


TASK_ID = re.compile(r"task\([A-Za-z0-9_-]{1,64}\)")  # what the WebUI's pages send as a task id


def _progress_module():
    """The WebUI's modules.progress (its task queue), or None in a WebUI without one."""
    try:
        from modules import progress
    except ImportError:
        return None
    return progress if all(hasattr(progress, name) for name in ("add_task_to_queue", "start_task", "finish_task",
                                                                 "create_task_id")) else None


@contextmanager
def _unsaved_settings_restored(overrides: dict) -> Iterator[None]:
    """process_images restores only the overridden settings the user has saved (those in opts.data); one
    still at its default would keep our value after the call. Forget those again, back to the default."""
    from modules import shared

    unsaved = [key for key in overrides if key not in shared.opts.data]
    try:
        yield
    finally:
        for key in unsaved:
            shared.opts.data.pop(key, None)


def _checked_lora_name(name, folder: Path) -> str:
    """A name that can stand in `<lora:name:w>` and in the folder: no path parts, no tag syntax."""
    if not isinstance(name, str) or not name or not set(name) <= LORA_NAME_CHARS or name.startswith("."):
        raise LoraFileError(f"LoRA name {name!r} must be a file name in {folder} "
                            "(letters, digits, '-', '_', '.', spaces)")
    return name


def _unit_dict(control: Control, unit: UnitSpec, spec: ControlSpec, model: str, size: tuple[int, int]) -> dict:
    ready = control.preprocessed and spec.ready_module is not None
    module = spec.ready_module if ready else unit.module
    picture = control.image.convert("RGB")
    if unit.spatial:
        picture = picture.resize(size, Image.LANCZOS)  # aligned with the init image, which has this size
    return {"enabled": True, "module": module, "model": model, "weight": float(control.weight),
            "image": np.asarray(picture),  # ControlNet reads numpy arrays (or base64), not PIL images
            "resize_mode": "Just Resize", "processor_res": -1,
            "threshold_a": -1 if ready else unit.threshold_a, "threshold_b": -1 if ready else unit.threshold_b,
            "guidance_start": float(control.start), "guidance_end": float(control.end),
            "pixel_perfect": unit.spatial, "control_mode": CONTROL_MODES[control.mode],
            "save_detected_map": True}


def _match_model(wanted: tuple[str, ...], available: Sequence[str]) -> str | None:
    """The first available model ("name [hash]") whose name contains a wanted part, in wanted order."""
    names = {model: model.rsplit(" [", 1)[0].lower() for model in available}
    for part in wanted:
        found = sorted((model for model, name in names.items() if part in name), key=len)
        if found:
            return found[0]
    return None


def _refuse_missing_models(controls, specs, available, family: str) -> None:
    from modules import shared

    missing = [f"{c.kind} (one of: {', '.join(u.models)}; from {specs[c.kind].download})"
               for c in controls for u in specs[c.kind].units if not _match_model(u.models, available)]
    if missing:
        folder = Path(shared.models_path) / "ControlNet"
        raise ControlError(f"ControlNet model missing for {family}: " + "; ".join(dict.fromkeys(missing)) +
                           f". Put the model files in {folder} (or extensions/sd-webui-controlnet/models); the next "
                           f"call finds them, no restart needed. Found: {', '.join(available) or 'no models'}")


def _annotator_dir(external_code) -> Path | None:
    """Where sd-webui-controlnet keeps preprocessor weights (its annotator_path rules); None on Forge."""
    if external_code.__name__ != CONTROLNET_MODULES[0]:
        return None
    from modules import shared

    configured = shared.opts.data.get("control_net_modules_path") or getattr(
        shared.cmd_opts, "controlnet_annotator_models_path", None)
    if configured:
        return Path(configured) if Path(configured).is_absolute() else Path(shared.data_path) / configured
    return Path(external_code.__file__).resolve().parents[1] / "annotator" / "downloads"


def _missing_annotators(external_code, units: list[dict]) -> list[str]:
    folder = _annotator_dir(external_code)
    if folder is None:
        return []
    return list(dict.fromkeys(f"{unit['module']} needs {folder / ANNOTATOR_FILES[unit['module']]}"
                              for unit in units if unit["module"] in ANNOTATOR_FILES
                              and not (folder / ANNOTATOR_FILES[unit["module"]]).is_file()))


def _unit_field_names(unit_class) -> set[str] | None:
    if hasattr(unit_class, "__fields__"):  # pydantic model (API 3)
        return set(unit_class.__fields__)
    if hasattr(unit_class, "__dataclass_fields__"):  # Forge
        return set(unit_class.__dataclass_fields__)
    return None


def _checked_unit(external_code, unit: dict) -> dict:
    """The unit as the installed ControlNet will read it: fields it does not know are an error (it would
    silently ignore them), values it rejects are an error now rather than a control-less image later."""
    unit_class = getattr(external_code, "ControlNetUnit", None)
    known = _unit_field_names(unit_class)
    if known is not None:
        unit = {key: value for key, value in unit.items() if key in known or key not in OPTIONAL_UNIT_FIELDS}
        unknown = sorted(set(unit) - known)
        if unknown:
            raise ControlError(f"this ControlNet version does not know the unit field(s) {', '.join(unknown)}; "
                               "update sd-webui-controlnet")
    if hasattr(unit_class, "from_dict"):
        try:
            unit_class.from_dict(unit)
        except (ValueError, TypeError, AssertionError) as error:  # pydantic's ValidationError is a ValueError
            raise ControlError(f"ControlNet refused the {unit['module']} unit ({unit['model']}): {error}") from error
    return unit


def _put_units(p, runner, units: list[dict], external_code) -> None:
    """Our units (no units: all disabled) into ControlNet's slice of p.script_args."""
    if hasattr(external_code, "update_cn_script_in_processing"):
        external_code.update_cn_script_in_processing(p, list(units))
        return
    # Forge: the slice is written directly, padded with disabled units.
    cn_script = external_code.find_cn_script(runner)
    width = cn_script.args_to - cn_script.args_from
    if len(units) > width:
        raise ControlError(f"{len(units)} ControlNet units are needed but only {width} are set up; raise "
                           "Settings → ControlNet → 'ControlNet unit number' and restart")
    script_args = list(p.script_args)
    script_args[cn_script.args_from:cn_script.args_to] = [*units, *[{"enabled": False}] * (width - len(units))]
    p.script_args = tuple(script_args)


def _check_units_attached(p, external_code, expected: int) -> None:
    attached = [unit for unit in external_code.get_all_units_in_processing(p) if getattr(unit, "enabled", False)]
    if len(attached) != expected:
        raise ControlError(
            f"ControlNet received {len(attached)} of {expected} units through the script arguments. Extensions "
            "that steer ControlNet through p.control_net_* attributes instead need Settings → ControlNet → 'Allow "
            "other script to control this extension'; Portrait Studio does not, so this is an incompatibility "
            "with the installed ControlNet version")


@contextmanager
def _script_ranges_restored(runner) -> Iterator[None]:
    """ControlNet's update_cn_script moves the scripts' argument ranges when it gets more units than the
    UI has; the WebUI's own UI keeps slicing its inputs by those ranges, so they are put back afterwards
    (the queue lock keeps any UI generation out meanwhile)."""
    ranges = [(script, script.args_from, script.args_to) for script in getattr(runner, "scripts", [])]
    try:
        yield
    finally:
        for script, args_from, args_to in ranges:
            script.args_from, script.args_to = args_from, args_to


def _default_script_args(runner) -> list:
    """Every script's UI default values in its args slice, as the WebUI's own API builds them (read from
    the components the WebUI created, not by building the UI again); 0 = no selectable script."""
    ends = [script.args_to for script in runner.scripts if script.args_to is not None]
    script_args = [None] * max([1, *ends])
    script_args[0] = 0
    for script in runner.alwayson_scripts:
        if script.args_from is None or script.args_to is None:
            continue
        width = script.args_to - script.args_from
        values = [getattr(control, "value", None) for control in (script.controls or [])]
        # ControlNet resizes its own slice; there the values no longer line up and are replaced anyway.
        script_args[script.args_from:script.args_to] = values if len(values) == width else [None] * width
    return script_args


def _webui_sampler(name: str) -> tuple[str, str]:
    """("DPM++ 2M", "Karras") for "DPM++ 2M Karras"; the WebUI itself swaps an unknown name for its default."""
    from modules import sd_samplers

    sampler, scheduler = sd_samplers.get_sampler_and_scheduler(name, None, convert_automatic=False)
    if name != sampler and name.lower() != f"{sampler} {scheduler}".lower():
        known = ", ".join(sd_samplers.visible_sampler_names())
        raise InputImageError(f"unknown sampler {name!r}; the WebUI has {known}")
    return sampler, scheduler


def _resolves_sampler(name: str) -> bool:
    try:
        _webui_sampler(name)
    except InputImageError:
        return False
    return True


def _face_restorer(name: str):
    from modules import codeformer_model, gfpgan_model

    return codeformer_model.codeformer if name == "CodeFormer" else gfpgan_model.gfpgan_face_restorer


class _RecordCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _run_restorer(model, name: str, image: Image.Image, codeformer_weight: float) -> PostprocessResult:
    """One restore call; the WebUI's fallback (log line + the very input array back) is detected."""
    pixels = np.array(image.convert("RGB"))
    collector = _RecordCollector()
    logger = logging.getLogger("modules.face_restoration_utils")
    logger.addHandler(collector)
    try:
        restored = model.restore(pixels, w=codeformer_weight) if name == "CodeFormer" else model.restore(pixels)
    finally:
        logger.removeHandler(collector)
    if restored is pixels or any(RESTORE_FAILED_MESSAGE in message for message in collector.messages):
        folder = Path(getattr(model, "model_path", "") or "models")
        return PostprocessResult(image, False, f"{name} could not load its weights; put {RESTORER_WEIGHTS[name]} in "
                                               f"{folder} (facexlib's detection/parsing weights in models/GFPGAN); "
                                               "the image was left unrestored")
    return PostprocessResult(Image.fromarray(np.asarray(restored, dtype=np.uint8)), True)


def _find_upscaler(name: str):
    from modules import shared

    for data in shared.sd_upscalers:
        if data.name.lower() == name.lower():
            return data
    known = ", ".join(data.name for data in shared.sd_upscalers)
    raise InputImageError(f"upscaler {name!r} is not in the WebUI (known: {known})")


def _same_pixels(first: Image.Image, second: Image.Image) -> bool:
    return first.size == second.size and np.array_equal(np.asarray(first.convert("RGB")),
                                                        np.asarray(second.convert("RGB")))


