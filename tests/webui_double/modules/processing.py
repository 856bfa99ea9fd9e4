"""Double of modules/processing.py: the processing objects and process_images().

Field names, defaults and init-only fields are the real ones (a subset: unknown keyword arguments
raise TypeError, as with the real dataclasses). The order of process_images() is the real one:
scripts.before_process, override_settings applied (a checkpoint override not found in
sd_models.checkpoint_aliases is silently dropped), sampler name autocorrection, scripts.process,
per image: stop if state.interrupted, extra networks (<lora:...>) activated, sampling, state.nextjob(),
face restoration, saving unless do_not_save_samples, optional mask images, the grid unless
do_not_save_grid, then scripts.postprocess (where ControlNet appends its detected maps), settings
restored. process_images does NOT take queue_lock.

Sampling itself is delegated to `backend` (webui_double.generation.DiffusersBackend: DiffusersHost on
the tiny model), the double's stand-in for shared.sd_model and the samplers.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modules import extra_networks, face_restoration, scripts, sd_models, sd_samplers, sd_vae_approx, shared

backend = None
"""Set by webui_double.generation.start(); process_images() fails without it, as without a model."""


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    overlay_images: list = None
    eta: float = None
    denoising_strength: float = None
    override_settings: dict = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    disable_extra_networks: bool = False
    comments: dict = None

    scripts_value: Any = field(default=None, init=False)
    script_args_value: Any = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    is_api: bool = field(default=False, init=False)

    def __post_init__(self):
        self.comments = {}
        self.styles = self.styles or []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text):
        self.comments[text] = 1

    def save_samples(self) -> bool:
        return shared.opts.samples_save and not self.do_not_save_samples and not shared.state.interrupted

    def close(self):
        """The real one frees the cached conditionings; nothing to free here."""


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str = None


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Image.Image = None

    image_mask: Any = field(default=None, init=False)
    mask_for_overlay: Image.Image = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask  # as the real one: the constructor's `mask` becomes image_mask
        self.mask = None
        if isinstance(self.mask_blur, int):
            self.mask_blur_x = self.mask_blur_y = self.mask_blur


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.info = info
        self.infotexts = infotexts or [info]
        self.width, self.height = p.width, p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale, self.steps = p.cfg_scale, p.steps
        self.index_of_first_image = index_of_first_image
        self.extra_generation_params = p.extra_generation_params
        self.comments = comments


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    opts = shared.opts
    stored_opts = {k: opts.data[k] if k in opts.data else opts.get_default(k)
                   for k in p.override_settings if k in opts.data}
    try:
        if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
            p.override_settings.pop("sd_model_checkpoint", None)
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
        sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
        res = process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def _loaded_checkpoint_name() -> str | None:
    info = sd_models.checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
    if info is None and sd_models.checkpoints_list:
        info = next(iter(sd_models.checkpoints_list.values()))
    return None if info is None else info.name_for_extra


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    seed = int(random.randrange(4294967294)) if p.seed in (-1, None) else int(p.seed)
    if p.restore_faces is None:
        p.restore_faces = shared.opts.face_restoration
    p.sd_model_name = _loaded_checkpoint_name()
    p.all_prompts = [p.prompt] * (p.n_iter * p.batch_size)
    p.all_negative_prompts = [p.negative_prompt] * len(p.all_prompts)
    p.all_seeds = [seed + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    if shared.opts.live_previews_enable and shared.opts.show_progress_type == "Approx NN":
        sd_vae_approx.model()  # as the real one: loaded (downloaded when missing) before sampling starts
    if shared.state.job_count == -1:
        shared.state.job_count = p.n_iter
    output_images = []
    for n in range(p.n_iter):
        if shared.state.interrupted or shared.state.stopping_generation:
            break
        prompt, p.extra_network_data = extra_networks.parse_prompt(p.all_prompts[n])
        loras = [] if p.disable_extra_networks else activate_loras(p)
        image = backend.generate(p, prompt, p.all_negative_prompts[n], p.all_seeds[n], loras)
        shared.state.nextjob()
        output_images += _finish_image(p, image, n)
    index_of_first_image = _add_grid(p, output_images)
    res = Processed(p, output_images, seed=p.all_seeds[0], info=_infotext(p),
                    index_of_first_image=index_of_first_image)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res


def activate_loras(p) -> list[tuple[Path, float]]:
    """The built-in Lora extension: names are file stems under --lora-dir (looked up again when
    unknown, so a new file is found without restart); a name not found is logged and skipped."""
    lora_dir = Path(shared.cmd_opts.lora_dir or Path(shared.models_path) / "Lora")
    on_disk = {path.stem: path for path in sorted(lora_dir.rglob("*"))
               if path.suffix in (".safetensors", ".pt", ".ckpt")} if lora_dir.is_dir() else {}
    found = []
    for params in p.extra_network_data.get("lora", []):
        name = params.positional[0]
        multiplier = float(params.positional[1]) if len(params.positional) > 1 else 1.0
        if name not in on_disk:
            logging.info(f"Couldn't find network with name {name}")
            continue
        found.append((on_disk[name], multiplier))
    return found


def _finish_image(p, image: Image.Image, n: int) -> list[Image.Image]:
    if p.restore_faces:
        image = Image.fromarray(face_restoration.restore_faces(np.asarray(image)))
    if p.scripts is not None:
        pp = scripts.PostprocessImageArgs(image)
        p.scripts.postprocess_image(p, pp)
        image = pp.image
    if p.save_samples():
        Path(p.outpath_samples).mkdir(parents=True, exist_ok=True)  # TypeError when None, as os.path.join
        image.save(Path(p.outpath_samples) / f"{n:05d}-{p.all_seeds[n]}.png")
    extra = []
    mask = getattr(p, "mask_for_overlay", None)
    if mask is not None and shared.opts.return_mask:
        extra.append(mask.convert("RGB"))
    if mask is not None and shared.opts.return_mask_composite:
        extra.append(Image.composite(image, Image.new("RGB", image.size), mask.convert("L").resize(image.size)))
    return [image, *extra]


def _add_grid(p, output_images: list) -> int:
    unwanted = len(output_images) < 2 and shared.opts.grid_only_if_multiple
    if (shared.opts.return_grid or shared.opts.grid_save) and not p.do_not_save_grid and not unwanted:
        grid = Image.new("RGB", (sum(i.width for i in output_images), max(i.height for i in output_images)))
        x = 0
        for image in output_images:
            grid.paste(image, (x, 0))
            x += image.width
        if shared.opts.return_grid:
            output_images.insert(0, grid)
            return 1
    return 0


def _infotext(p) -> str:
    params = {"Steps": p.steps, "Sampler": p.sampler_name, "Schedule type": p.scheduler, "CFG scale": p.cfg_scale,
              "Seed": p.all_seeds[0] if p.all_seeds else p.seed, "Size": f"{p.width}x{p.height}",
              "Model": p.sd_model_name, **p.extra_generation_params}
    text = ", ".join(f"{k}: {v}" for k, v in params.items() if v is not None)
    return f"{p.prompt}\nNegative prompt: {p.negative_prompt}\n{text}"
