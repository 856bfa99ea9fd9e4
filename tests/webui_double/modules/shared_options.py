"""Double of modules/shared_options.py: the built-in settings generation reads (real keys and defaults)."""

from __future__ import annotations

from pathlib import Path

from modules.options import OptionInfo
from modules.paths_internal import data_path

_outputs = Path(data_path) / "outputs"

options_templates = {
    "samples_save": OptionInfo(True, "Always save all generated images"),
    "grid_save": OptionInfo(True, "Always save all generated image grids"),
    "grid_only_if_multiple": OptionInfo(True, "Do not save grids consisting of one picture"),
    "return_grid": OptionInfo(True, "Show grid in gallery"),
    "outdir_txt2img_samples": OptionInfo(str(_outputs / "txt2img-images"), "Output directory for txt2img images"),
    "outdir_img2img_samples": OptionInfo(str(_outputs / "img2img-images"), "Output directory for img2img images"),
    "outdir_txt2img_grids": OptionInfo(str(_outputs / "txt2img-grids"), "Output directory for txt2img grids"),
    "outdir_img2img_grids": OptionInfo(str(_outputs / "img2img-grids"), "Output directory for img2img grids"),
    "face_restoration": OptionInfo(False, "Restore faces"),
    "face_restoration_model": OptionInfo("CodeFormer", "Face restoration model"),
    "code_former_weight": OptionInfo(0.5, "CodeFormer weight"),
    "face_restoration_unload": OptionInfo(False, "Move face restoration model from VRAM into RAM after processing"),
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint"),
    "img2img_color_correction": OptionInfo(False, "Apply color correction to img2img results to match original "
                                                  "colors."),
    "return_mask": OptionInfo(False, "For inpainting, include the greyscale mask in results for web"),
    "return_mask_composite": OptionInfo(False, "For inpainting, include masked composite in results for web"),
    "overlay_inpaint": OptionInfo(True, "Overlay original for inpaint"),
    "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
    "show_progress_type": OptionInfo("Approx NN", "Live preview method"),
    "enable_pnginfo": OptionInfo(True, "Write infotext to metadata of the generated image"),
    "multiple_tqdm": OptionInfo(True, "Add a second progress bar to the console that shows progress for an entire "
                                      "job."),
}
