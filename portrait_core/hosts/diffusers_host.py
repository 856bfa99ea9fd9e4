"""DiffusersHost: the standalone diffusion host, on diffusers pipelines (also what the tests drive).

It loads a base model once (a diffusers folder or a single-file WebUI checkpoint), keeps it and
every ControlNet it has loaded in memory, and builds cheap pipeline objects around those shared
components per task. LoRAs are merged into the weights and restored exactly when the set changes.
An IP-Adapter (image prompt) is loaded once with diffusers' loader and switched on only for calls
that carry an `ip_adapter` control. The colour control runs as a T2I-Adapter when one is found (once per
call instead of a ControlNet at every step, as inside the WebUI), and a control stops running its network
after its start/end window (see `hosts.diffusers_controls`). ControlNets, T2I-Adapters and IP-Adapters
made for another model family (SD1.5 vs SDXL) are refused before they are loaded. Super-resolution is
Real-ESRGAN on ncnn (`models.superres`), face restoration the user's CodeFormer / GFPGAN file
(`faces.restoration`).
"""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from portrait_core.core import imaging
from portrait_core.errors import CheckpointError, ControlError, GenerationInterrupted, InputImageError, LoraFileError
from portrait_core.hosts.base import (
    CheckpointRef,
    Control,
    HostSession,
    LoraList,
    SessionLock,
    check_generation_size,
    check_inpaint_inputs,
    find_checkpoint,
)
from portrait_core.hosts.ip_adapter import (
    FAMILY_LABELS,
    IP_ADAPTER_FOLDER,
    IP_ADAPTER_KIND,
    LoadedIPAdapter,
    base_cross_attention_dim,
    check_ip_adapter_fits,
    choose_ip_adapter,
    image_prompt_scale,
    ip_adapter_files,
)
from portrait_core.log import get_logger
from portrait_core.models.checkpoints.hashes import model_short_hash

log = get_logger("diffusers_host")

SUPPORTED_CONTROLS = ("canny", "openpose", "tile", "color")
LORA_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_. ")

# WebUI sampler name -> (diffusers scheduler class, extra config)
SAMPLER_SCHEDULERS = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
}

# (family, task, with controls) -> diffusers pipeline class name
PIPELINE_CLASSES = {
    ("sd15", "txt2img", False): "StableDiffusionPipeline",
    ("sd15", "txt2img", True): "StableDiffusionControlNetPipeline",
    ("sd15", "inpaint", False): "StableDiffusionInpaintPipeline",
    ("sd15", "inpaint", True): "StableDiffusionControlNetInpaintPipeline",
    ("sdxl", "txt2img", False): "StableDiffusionXLPipeline",
    ("sdxl", "txt2img", True): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "inpaint", False): "StableDiffusionXLInpaintPipeline",
    ("sdxl", "inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
}


class _StopRequested(Exception):  # noqa: N818 - internal signal out of the diffusers step loop
    pass


@dataclass(frozen=True)
class _Request:
    """One diffusion call, validated and sized."""

    task: str
    prompt: str
    negative: str
    controls: tuple[Control, ...]
    steps: int
    cfg: float
    seed: int
    sampler: str
    size: tuple[int, int]
    denoise: float = 1.0


class DiffusersHost:
    """A Host on diffusers. `base_model`: a diffusers folder or a `.safetensors` checkpoint (SD1.5 or SDXL,
    told apart from its header or configs).

    ControlNets are looked up in `controlnets` (kind -> diffusers folder), else in
    `controlnet-<kind>/` folders next to / inside the base model folder (the tiny model's layout).
    The colour control runs on a T2I-Adapter from `t2i_adapters` (kind -> diffusers folder), else a
    `t2iadapter-color/` folder found the same way, and on its ControlNet only when there is no adapter
    or `color_adapter=False`.
    The IP-Adapter is `ip_adapter` (a weight file, or a folder of them), else the first one for the base
    model's family in an `ip-adapter/` folder inside / next to the base model; its CLIP image encoder
    is the `image_encoder/` folder beside the weight file (see `hosts.ip_adapter`).
    """

    skip_unused_encode = True  # False: diffusers' own inpaint (encodes the masked image); the benchmark's baseline
    cache_control_embeddings = True  # False: each ControlNet embeds its control image at every step (diffusers')

    def __init__(self, base_model: Path, *, controlnets: dict[str, Path] | None = None,
                 t2i_adapters: dict[str, Path] | None = None, color_adapter: bool = True,
                 ip_adapter: Path | None = None, lora_dir: Path | None = None, checkpoints_dir: Path | None = None,
                 progress_callback: Callable[[int, int, str], None] | None = None, device: str | None = None,
                 super_resolution=None, face_restorer=None):
        self.base_model = Path(base_model)
        self._controlnet_paths = {k: Path(v) for k, v in (controlnets or {}).items()}
        self._adapter_paths = {k: Path(v) for k, v in (t2i_adapters or {}).items()}
        self._use_adapters = color_adapter
        self._ip_adapter_path = Path(ip_adapter) if ip_adapter else None
        self._lora_dir = Path(lora_dir) if lora_dir else self.base_model.parent / "Lora"
        self._checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else None
        self._progress_callback = progress_callback
        self._device = device
        self._interrupt = threading.Event()
        # One owner of the models: every call, LoRA merge/restore and scheduler change runs under this lock.
        self._gpu = SessionLock(self._interrupt.set)
        self._components = None
        self._controlnets: dict[str, object] = {}
        self._adapters: dict[str, object] = {}
        # Control networks run since the host was made: ControlNet forwards (one per unit and step it acts
        # in) and T2I-Adapter forwards (one per unit and call). The benchmark reports them.
        self.forwards = {"controlnet": 0, "adapter": 0}
        self._pipelines: dict[tuple, object] = {}
        self._lora_patcher = None
        self._ip_adapter = None  # LoadedIPAdapter, once a call has asked for an image prompt
        self.load_count = 0  # weight loads from disk; a warm call adds none
        self._checkpoint_ref: CheckpointRef | None = None
        self._super_resolution = super_resolution  # models.superres.RealESRGAN, made on first upscale
        self._face_restorer = face_restorer  # faces.restoration.FaceRestorer, made on first restore

    @classmethod
    def from_components(cls, components, *, device: str | None = None, **kwargs) -> DiffusersHost:
        """A host around models already in memory (e.g. the trainer's, with live LoRA adapters)."""
        host = cls(Path(components.source), device=device, **kwargs)
        host._components = components
        return host

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        if self._device is None:
            import torch

            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    @property
    def family(self) -> str:
        """"sd15" or "sdxl"; read from the checkpoint's header or configs when nothing is loaded yet."""
        if self._components is not None:
            return self._components.family
        from portrait_core.models.checkpoints.family import inspect_checkpoint

        return inspect_checkpoint(self.base_model).base_family

    def unload(self) -> None:
        """Drop every model this host holds; the next call loads again."""
        with self.session("unload"):
            self._unload()

    def _unload(self) -> None:
        if self._ip_adapter is not None and self._components is not None:
            self._ip_adapter.switch_off(self._components.unet)  # components may outlive us (the trainer's)
        self._ip_adapter = None
        self._components = None
        self._controlnets.clear()
        self._adapters.clear()
        self._pipelines.clear()
        self._lora_patcher = None
        for backend in (self._super_resolution, self._face_restorer):
            if backend is not None:
                backend.unload()

    def _load_components(self):
        if self._components is None:
            with self.session("load the base model"):  # two first callers must not both load (or import) it
                return self._load_components_now()
        return self._components

    def _load_components_now(self):
        if self._components is None:
            import torch

            from portrait_core.models.checkpoints.loading import load_components

            dtype = torch.float16 if self.device == "cuda" else torch.float32
            components = load_components(self.base_model, dtype=dtype)
            for model in (components.unet, components.vae, components.text_encoder, components.text_encoder_2):
                if model is not None:
                    model.to(self.device).requires_grad_(False).eval()
            self._components = components
            self.load_count += 1
            log.info("loaded base model %s (%s)", self.base_model.name, components.family)
        return self._components

    # ---- Host protocol -----------------------------------------------------------------------
    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str, negative: str = "", *,
                controls: Sequence[Control] = (), lora: LoraList = (), steps: int = 20,
                denoise: float = 0.45, cfg: float = 7.0, seed: int = 0, sampler: str = "Euler a",
                size: tuple[int, int] | None = None, mask_blur: int = 4) -> Image.Image:
        """Repaint the white part of `mask`; pixels away from it come back exactly as they were."""
        mask, size = check_inpaint_inputs(image, mask, size, steps, denoise)
        request = _Request("inpaint", prompt, negative, tuple(controls), steps, cfg, seed, sampler, size, denoise)
        work_image = image.convert("RGB").resize(size, Image.LANCZOS)
        work_mask = mask.resize(size, Image.NEAREST)
        with self.session("inpaint"):
            generated = self._run(request, lora, {"image": work_image, "mask_image": work_mask, "strength": denoise})
        return imaging.feathered_composite(work_image, generated, work_mask, mask_blur)

    def txt2img(self, prompt: str, negative: str = "", *, controls: Sequence[Control] = (),
                lora: LoraList = (), steps: int = 20, cfg: float = 7.0, seed: int = 0,
                sampler: str = "Euler a", size: tuple[int, int] = (512, 512)) -> Image.Image:
        request = _Request("txt2img", prompt, negative, tuple(controls), steps, cfg, seed, sampler,
                           check_generation_size(size))
        with self.session("txt2img"):
            return self._run(request, lora, {})

    def restore_faces(self, image: Image.Image, codeformer_weight: float = 0.7) -> Image.Image:
        """Every face restored by the user's CodeFormer / GFPGAN file; ModelUnavailableError saying which
        file to put where when there is none."""
        if self._face_restorer is None:
            from portrait_core.faces.restoration import FaceRestorer

            self._face_restorer = FaceRestorer(device=self.device)
        with self.session("restore faces"):
            return self._face_restorer.restore(image, codeformer_weight, interrupted=self.interrupted)

    def upscale(self, image: Image.Image, scale: float = 2.0, upscaler: str | None = None) -> Image.Image:
        """Real-ESRGAN x4plus (ncnn, CPU; progress per tile, interruptible), or the named 'Lanczos'."""
        from portrait_core.models.superres import RealESRGAN, upscale_standalone

        if self._super_resolution is None:
            self._super_resolution = RealESRGAN()
        with self.session("upscale"):
            return upscale_standalone(image, scale, upscaler, self._super_resolution, progress=self.progress,
                                      interrupted=self.interrupted)

    def checkpoints(self) -> list[str]:
        """The served base model, then the checkpoints in `checkpoints_dir`, by name (never a path)."""
        found = [self.base_model.name]
        if self._checkpoints_dir and self._checkpoints_dir.is_dir():
            found += sorted(p.name for p in self._checkpoints_dir.iterdir()
                            if p.suffix == ".safetensors" or (p / "model_index.json").is_file())
        return list(dict.fromkeys(found))

    def checkpoint_file(self, name: str) -> Path:
        if name in (self.base_model.name, self.base_model.stem):
            return self.base_model
        return find_checkpoint(name, [self._checkpoints_dir] if self._checkpoints_dir else [])

    def current_checkpoint(self) -> CheckpointRef:
        if self._checkpoint_ref is None:
            self._checkpoint_ref = CheckpointRef(self.base_model.name, self.base_model, self.family,
                                                 model_short_hash(self.base_model))
        return self._checkpoint_ref

    def controlnet_models(self) -> list[str]:
        """The control kinds this host can run now: ControlNets found, and "ip_adapter" when an
        IP-Adapter for the base model's family is present (both checked from files, nothing loaded)."""
        kinds = [kind for kind in SUPPORTED_CONTROLS
                 if self._controlnet_path(kind) is not None or self._runs_as_adapter(kind)]
        try:
            self._ip_adapter_file()
        except ControlError:
            return kinds
        return [*kinds, IP_ADAPTER_KIND]

    def lora_dir(self) -> Path:
        return self._lora_dir

    def progress(self, step: int, total: int, text: str = "") -> None:
        if self._progress_callback is not None:
            self._progress_callback(step, total, text)

    def session(self, job: str = "portrait studio") -> AbstractContextManager[HostSession]:
        """This host's GPU for one caller across several calls (reentrant within a thread); other callers
        wait. The interrupt flag is cleared when a thread's outermost session begins, so an Interrupt stops
        every remaining call of the session it was aimed at and never the next one."""
        return self._gpu.turn(job, on_start=self._interrupt.clear)

    def interrupt(self) -> None:
        """Ask the running call to stop after its current step (callable from another thread)."""
        self._interrupt.set()

    def refresh_loras(self) -> None:
        """Nothing to do: every call looks its LoRAs up in `lora_dir` again."""

    def samplers(self) -> list[str]:
        return list(SAMPLER_SCHEDULERS)

    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    # ---- internals -----------------------------------------------------------------------------
    def _run(self, request: _Request, lora: LoraList, task_kwargs: dict) -> Image.Image:
        import torch

        net_controls, image_prompt = _split_controls(request.controls)
        adapter_controls = [c for c in net_controls if self._runs_as_adapter(c.kind)]
        net_controls = [c for c in net_controls if c not in adapter_controls]
        # Validate controls, adapter and LoRA names before any loading work.
        control_kwargs = self._control_kwargs(request.task, net_controls, request.size)
        adapter_maps = [self._control_map(control, request.size) for control in adapter_controls]
        if image_prompt is not None:
            self._ip_adapter_file()
        lora_files = [(self._lora_path(name), float(weight)) for name, weight in lora]
        pipeline = self._pipeline(request.task, tuple(c.kind for c in net_controls), image_prompt is not None)
        prompt_kwargs = self._image_prompt_kwargs(pipeline, image_prompt)
        self._patcher().apply(lora_files)
        pipeline.scheduler = self._scheduler(request.sampler)
        residuals = self._adapter_residuals(pipeline, adapter_controls, adapter_maps)
        done = [0]
        nets = getattr(pipeline, "controlnet", None)
        counted_before = nets.forward_calls if nets is not None else 0
        try:
            with residuals:
                result = pipeline(
                    prompt=request.prompt, negative_prompt=request.negative or None,
                    num_inference_steps=request.steps, guidance_scale=request.cfg,
                    height=request.size[1], width=request.size[0],
                    generator=torch.Generator("cpu").manual_seed(request.seed),
                    callback_on_step_end=self._step_callback(request.task, done, image_prompt, residuals),
                    **task_kwargs, **control_kwargs, **prompt_kwargs)
        except _StopRequested:
            raise GenerationInterrupted(done[0], self._planned_steps(request)) from None
        finally:
            if nets is not None:
                self.forwards["controlnet"] += nets.forward_calls - counted_before
        return result.images[0]

    def _runs_as_adapter(self, kind: str) -> bool:
        from portrait_core.hosts.diffusers_controls import ADAPTER_KINDS

        return self._use_adapters and kind in ADAPTER_KINDS and self._adapter_path(kind) is not None

    def _adapter_residuals(self, pipeline, controls: Sequence[Control], maps: Sequence[Image.Image]):
        """The adapters' features for this call (each adapter runs here, once), added to the UNet while
        the call runs; a do-nothing context when no control runs as an adapter."""
        from contextlib import nullcontext

        if not controls:
            return nullcontext()
        from portrait_core.hosts.diffusers_controls import AdapterResiduals

        adapters = [(self._adapter(control.kind), control, control_map)
                    for control, control_map in zip(controls, maps, strict=True)]
        residuals = AdapterResiduals(pipeline.unet, adapters, lambda: pipeline.num_timesteps)
        self.forwards["adapter"] += residuals.adapter_forwards
        return residuals

    def _planned_steps(self, request: _Request) -> int:
        return max(1, int(request.steps * request.denoise)) if request.task == "inpaint" else request.steps

    def _step_callback(self, text: str, done: list[int], image_prompt: Control | None = None, residuals=None):
        scheduled = image_prompt is not None and (image_prompt.start > 0.0 or image_prompt.end < 1.0)

        def on_step_end(pipe, step_index, timestep, callback_kwargs):
            done[0] = step_index + 1
            if hasattr(residuals, "step"):
                residuals.step = done[0]
            self.progress(done[0], pipe.num_timesteps, text)
            if self._interrupt.is_set():
                raise _StopRequested
            if scheduled:  # the image prompt acts only between its start and end, as a ControlNet unit does
                pipe.set_ip_adapter_scale(image_prompt_scale(image_prompt, done[0] / pipe.num_timesteps))
            return callback_kwargs

        return on_step_end

    def _control_kwargs(self, task: str, controls: Sequence[Control], size: tuple[int, int]) -> dict:
        if not controls:
            return {}
        maps = [self._control_map(control, size) for control in controls]
        modes = {control.mode for control in controls}
        if "prompt" in modes:
            log.warning("DiffusersHost has no 'my prompt is more important' mode; running it as balanced")
        image_key = "control_image" if task == "inpaint" else "image"
        return {
            image_key: maps,
            "controlnet_conditioning_scale": [c.weight for c in controls],
            "control_guidance_start": [c.start for c in controls],
            "control_guidance_end": [c.end for c in controls],
            "guess_mode": "control" in modes,
        }

    def _image_prompt_kwargs(self, pipeline, image_prompt: Control | None) -> dict:
        """Switch the IP-Adapter on (at the control's starting scale) for an image prompt, off otherwise."""
        unet = self._load_components().unet
        if image_prompt is None:
            if self._ip_adapter is not None:
                self._ip_adapter.switch_off(unet)
            return {}
        self._ip_adapter.switch_on(unet)
        pipeline.set_ip_adapter_scale(image_prompt_scale(image_prompt, 0.0))
        return {"ip_adapter_image": image_prompt.image.convert("RGB")}

    def _control_map(self, control: Control, size: tuple[int, int]) -> Image.Image:
        if control.kind not in SUPPORTED_CONTROLS:
            raise ControlError(f"DiffusersHost cannot run a {control.kind!r} control; it runs "
                               f"{', '.join((*SUPPORTED_CONTROLS, IP_ADAPTER_KIND))}")
        if control.preprocessed:
            control_map = control.image.convert("RGB")
        elif control.kind == "canny":
            control_map = imaging.canny_map(control.image)
        elif control.kind == "color":
            control_map = imaging.color_grid_map(control.image)
        elif control.kind == "tile":
            control_map = imaging.tile_map(control.image)
        else:
            raise ControlError("openpose controls need a ready-made pose image (preprocessed=True)")
        return control_map.resize(size, Image.LANCZOS)

    def _controlnet_path(self, kind: str) -> Path | None:
        if kind in self._controlnet_paths:
            return self._controlnet_paths[kind]
        for folder in (self.base_model, self.base_model.parent):
            candidate = folder / f"controlnet-{kind}"
            if (candidate / "config.json").is_file():
                return candidate
        return None

    def _adapter_path(self, kind: str) -> Path | None:
        if kind in self._adapter_paths:
            return self._adapter_paths[kind]
        for folder in (self.base_model, self.base_model.parent):
            candidate = folder / f"t2iadapter-{kind}"
            if (candidate / "config.json").is_file():
                return candidate
        return None

    def _adapter(self, kind: str):
        if kind not in self._adapters:
            from diffusers import T2IAdapter

            from portrait_core.hosts.diffusers_controls import check_adapter_fits

            path = self._adapter_path(kind)
            if path is None or not (path / "config.json").is_file():
                raise ControlError(f"no T2I-Adapter for {kind!r}: put a diffusers T2I-Adapter folder at "
                                   f"{self.base_model.parent / f't2iadapter-{kind}'} or pass t2i_adapters=")
            components = self._load_components()
            check_adapter_fits(kind, path, components.unet, self.base_model.name)
            model = T2IAdapter.from_pretrained(str(path), local_files_only=True, torch_dtype=components.unet.dtype)
            self._adapters[kind] = model.to(self.device).requires_grad_(False).eval()
            self.load_count += 1
        return self._adapters[kind]

    def _controlnet(self, kind: str):
        if kind not in self._controlnets:
            from diffusers import ControlNetModel

            path = self._controlnet_path(kind)
            if path is None or not (path / "config.json").is_file():
                raise ControlError(f"no ControlNet model for {kind!r}: put a diffusers ControlNet folder at "
                                   f"{self.base_model.parent / f'controlnet-{kind}'} or pass controlnets=")
            components = self._load_components()
            _check_controlnet_family(kind, path, components, self.base_model.name)
            model = ControlNetModel.from_pretrained(str(path), local_files_only=True,
                                                    torch_dtype=components.unet.dtype)
            self._controlnets[kind] = model.to(self.device).requires_grad_(False).eval()
            self.load_count += 1
        return self._controlnets[kind]

    def _pipeline(self, task: str, control_kinds: tuple[str, ...], image_prompt: bool = False):
        components = self._load_components()
        key = (task, control_kinds, image_prompt)
        if key not in self._pipelines:
            import diffusers

            class_name = PIPELINE_CLASSES[(components.family, task, bool(control_kinds))]
            kwargs = _pipeline_components(components)
            if control_kinds:
                from portrait_core.hosts.diffusers_controls import WindowedControlNets

                kwargs["controlnet"] = WindowedControlNets([self._controlnet(k) for k in control_kinds],
                                                           cache=self.cache_control_embeddings)
            if image_prompt and self._ip_adapter is not None:
                kwargs.update(self._ip_adapter.pipeline_modules())
            pipeline = getattr(diffusers, class_name)(**kwargs)
            pipeline.set_progress_bar_config(disable=True)
            if task == "inpaint" and self.skip_unused_encode:
                from portrait_core.hosts.diffusers_controls import skip_masked_image_encode

                skip_masked_image_encode(pipeline)
            if image_prompt and self._ip_adapter is None:
                self._ip_adapter = self._load_ip_adapter(pipeline)
            self._pipelines[key] = pipeline
        return self._pipelines[key]

    # ---- IP-Adapter ----------------------------------------------------------------------------
    def _ip_adapter_folders(self) -> list[Path]:
        inside = [self.base_model / IP_ADAPTER_FOLDER] if self.base_model.is_dir() else []
        return [*inside, self.base_model.parent / IP_ADAPTER_FOLDER]

    def _ip_adapter_file(self):
        """The IP-Adapter to use, chosen and checked from file headers only; ControlError naming what to
        put where when there is none for this base model's family."""
        if self._ip_adapter is not None:
            return self._ip_adapter.adapter
        if self._ip_adapter_path is not None and not self._ip_adapter_path.exists():
            raise ControlError(f"IP-Adapter not found: {self._ip_adapter_path} (given as ip_adapter=)")
        places = [self._ip_adapter_path] if self._ip_adapter_path else self._ip_adapter_folders()
        candidates = [path for place in places for path in ([place] if place.is_file() else ip_adapter_files(place))]
        where = " or ".join(str(place) for place in places)
        return choose_ip_adapter(candidates, self._cross_attention_dim(), self.family, where)

    def _cross_attention_dim(self) -> int:
        width = None if self._components is not None else base_cross_attention_dim(self.base_model)
        return width or self._load_components().unet.config.cross_attention_dim

    def _load_ip_adapter(self, pipeline):
        components = self._load_components()
        adapter = self._ip_adapter_file()
        check_ip_adapter_fits(adapter, components.unet, components.family, self.base_model.name)
        loaded = LoadedIPAdapter.load(pipeline, adapter)
        self.load_count += 2  # the adapter's weights and its image encoder
        return loaded

    def _scheduler(self, sampler: str):
        import diffusers

        if sampler not in SAMPLER_SCHEDULERS:
            raise InputImageError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_SCHEDULERS)}")
        class_name, extra = SAMPLER_SCHEDULERS[sampler]
        return getattr(diffusers, class_name).from_config(self._load_components().scheduler.config, **extra)

    def _patcher(self):
        if self._lora_patcher is None:
            from portrait_core.models.lora import LoraPatcher

            components = self._load_components()
            self._lora_patcher = LoraPatcher({"unet": components.unet, "text_encoder": components.text_encoder,
                                              "text_encoder_2": components.text_encoder_2})
        return self._lora_patcher

    def _lora_path(self, name) -> Path:
        """A LoRA given as a path is used as is; a name must be a plain file name in the LoRA folder."""
        if isinstance(name, Path):
            return name
        if not name or not set(name) <= LORA_NAME_CHARS or name.startswith("."):
            raise LoraFileError(f"LoRA name {name!r} must be a file name in {self._lora_dir} "
                                "(letters, digits, '-', '_', '.', spaces)")
        stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
        path = self._lora_dir / f"{stem}.safetensors"
        if not path.is_file():
            raise LoraFileError(f"LoRA {name!r} not found: expected {path}")
        return path


def _split_controls(controls: Sequence[Control]) -> tuple[list[Control], Control | None]:
    """ControlNet units apart from the image prompt (at most one: one reference image per call)."""
    image_prompts = [control for control in controls if control.kind == IP_ADAPTER_KIND]
    if len(image_prompts) > 1:
        raise ControlError(f"one {IP_ADAPTER_KIND} control per call, got {len(image_prompts)}; "
                           "combine the reference images into one")
    return [control for control in controls if control.kind != IP_ADAPTER_KIND], next(iter(image_prompts), None)


def _check_controlnet_family(kind: str, path: Path, components, base_name: str) -> None:
    """Refuse a ControlNet made for another model family before loading it (its configs tell)."""
    from portrait_core.models.checkpoints.family import inspect_checkpoint

    try:
        info = inspect_checkpoint(path)
    except CheckpointError as error:
        raise ControlError(f"ControlNet {kind!r} at {path} is unusable: {error}") from error
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    width, base_width = config.get("cross_attention_dim"), components.unet.config.cross_attention_dim
    if info.base_family != components.family or width != base_width:
        label = FAMILY_LABELS.get(components.family, components.family)
        raise ControlError(
            f"ControlNet {kind!r} at {path} was made for {FAMILY_LABELS.get(info.base_family, info.base_family)} "
            f"(cross-attention width {width}), but the base model {base_name} is {label} (width {base_width}); "
            f"use an {label} {kind} ControlNet")


def _pipeline_components(components) -> dict:
    kwargs = {"vae": components.vae, "text_encoder": components.text_encoder, "tokenizer": components.tokenizer,
              "unet": components.unet, "scheduler": components.scheduler}
    if components.family == "sdxl":
        kwargs.update(text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2)
    else:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return kwargs


