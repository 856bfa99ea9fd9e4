"""Generation in the WebUI double: what start-up sets up for txt2img / img2img, on the tiny model.

After `webui_started(...)`, `start(backend)` does what the real start-up does for generation: sets up
the CodeFormer / GFPGAN restorers and the upscalers, optionally "installs" sd-webui-controlnet (its
package in sys.modules, its settings, its model files in models/ControlNet, its always-on script),
builds scripts_txt2img / scripts_img2img with the built-in Seed and Sampler scripts, and plugs in
`backend` — a DiffusersHost on the tiny model — as the model that process_images() samples with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from portrait_core.errors import GenerationInterrupted
from portrait_core.hosts.diffusers_host import SAMPLER_SCHEDULERS, DiffusersHost

# Real SD1.5 ControlNet file names -> the kind of the tiny model's ControlNet that plays each of them.
TINY_CONTROLNET_MODELS = {
    "control_v11p_sd15_canny": "canny",
    "control_v11p_sd15_openpose": "openpose",
    "control_v11f1e_sd15_tile": "tile",
    "t2iadapter_color_sd14v1": "color",
}


@dataclass
class BackendRun:
    """What one sampling call received after the WebUI's processing: the assertions' view of a p."""

    p: object
    prompt: str
    negative: str
    seed: int
    sampler: str
    loras: list
    controls: list
    size: tuple[int, int]


@dataclass
class DiffusersBackend:
    """Stands in for shared.sd_model + the samplers: runs a processing object on a DiffusersHost.

    `step_hook(step, total)` runs in the generating thread at every step (tests use it to press
    Interrupt or to look at the queue lock mid-generation)."""

    model_dir: Path
    runs: list = field(default_factory=list)
    step_hook: object = None

    def __post_init__(self):
        self.host = DiffusersHost(self.model_dir, progress_callback=self._on_step)

    def _on_step(self, step: int, total: int, text: str) -> None:
        from modules import shared

        shared.state.sampling_step, shared.state.sampling_steps = step, total
        if self.step_hook is not None:
            self.step_hook(step, total)
        if shared.state.interrupted or shared.state.skipped:
            self.host.interrupt()  # the real sampler stops and decodes what it has

    def generate(self, p, prompt: str, negative: str, seed: int, loras: list) -> Image.Image:
        from modules import processing

        controls = list(getattr(p, "controlnet_double_controls", []))
        common = {"controls": controls, "lora": loras, "steps": p.steps, "cfg": p.cfg_scale, "seed": seed,
                  "sampler": self.sampler(p)}
        self.runs.append(BackendRun(p, prompt, negative, seed, common["sampler"], loras, controls,
                                    (p.width, p.height)))
        if isinstance(p, processing.StableDiffusionProcessingImg2Img):
            return self._img2img(p, prompt, negative, common)
        try:
            return self.host.txt2img(prompt, negative, size=(p.width, p.height), **common)
        except GenerationInterrupted:
            return Image.new("RGB", (p.width, p.height), (127, 127, 127))

    @staticmethod
    def sampler(p) -> str:
        """The WebUI's sampler + schedule type as a DiffusersHost sampler name."""
        from modules import sd_samplers

        scheduler = p.scheduler
        if scheduler in (None, "Automatic"):
            default = sd_samplers.all_samplers_map[p.sampler_name].options.get("scheduler")
            scheduler = default.capitalize() if default else None
        combined = f"{p.sampler_name} {scheduler}"
        return combined if combined in SAMPLER_SCHEDULERS else p.sampler_name

    def _img2img(self, p, prompt: str, negative: str, common: dict) -> Image.Image:
        size = (p.width, p.height)
        init = p.init_images[0].convert("RGB")
        mask = (p.image_mask if p.image_mask is not None else Image.new("L", init.size, 255)).convert("L")
        if p.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        work, work_mask = init.resize(size, Image.LANCZOS), mask.resize(size, Image.NEAREST)
        p.mask_for_overlay = work_mask
        if p.inpainting_fill != 1:  # 0 = fill: the masked area starts from flat colour, not the original
            work.paste(tuple(int(c) for c in work.resize((1, 1), Image.BOX).getpixel((0, 0))), mask=work_mask)
        try:
            result = self.host.inpaint(work, work_mask, prompt, negative, denoise=p.denoising_strength, size=size,
                                       mask_blur=p.mask_blur_x, **common)
        except GenerationInterrupted:
            result = work
        if p.inpaint_full_res and init.size != size:
            # "Only masked": the real one pastes the rendered crop back into the full-size picture.
            result = Image.composite(result.resize(init.size, Image.LANCZOS), init, mask)
        return result


def start(backend: DiffusersBackend, *, controlnet: bool = True,
          controlnet_models: dict[str, str] | None = None) -> DiffusersBackend:
    """Inside webui_started(): make generation work (see the module docstring); returns `backend`."""
    from modules import codeformer_model, gfpgan_model, processing, scripts, shared, upscaler
    from modules.processing_scripts import sampler, seed

    codeformer_model.setup_model(shared.cmd_opts.codeformer_models_path)
    gfpgan_model.setup_model(shared.cmd_opts.gfpgan_models_path)
    upscaler.load_upscalers()
    scripts.scripts_data[:] = [scripts.ScriptClassData(seed.ScriptSeed, seed.__file__, "", seed),
                               scripts.ScriptClassData(sampler.ScriptSampler, sampler.__file__, "", sampler)]
    if controlnet:
        scripts.scripts_data.append(install_controlnet(controlnet_models or TINY_CONTROLNET_MODELS))
    scripts.create_script_runners()
    processing.backend = backend
    backend.runs.clear()
    backend.step_hook = None
    return backend


def install_controlnet(models: dict[str, str]):
    """sd-webui-controlnet as the WebUI loads it: package importable from sys.modules, settings
    registered, model files listed; returns its script's ScriptClassData."""
    import internal_controlnet.external_code  # noqa: F401 - what loading the extension leaves in sys.modules
    from internal_controlnet import extension

    from modules import scripts

    extension.on_ui_settings()
    extension.models_dir().mkdir(parents=True, exist_ok=True)
    for stem in models:
        (extension.models_dir() / f"{stem}.safetensors").write_bytes(stem.encode())
    extension.model_kinds.update({stem.lower(): kind for stem, kind in models.items()})
    extension.update_cn_models()
    return scripts.ScriptClassData(extension.Script, extension.__file__, str(extension.EXTENSION_DIR), extension)
