"""Double of modules/sd_vae_approx.py: model() looks for the "Approx NN" live-preview weights where the
real one does (models/VAE-approx/, then the WebUI's own models/VAE-approx/) and downloads them when
missing, which offline fails with urllib's URLError, as the real torch.hub download does. The WebUI's
repository ships the SD1.5 file (models/VAE-approx/model.pt); the SDXL one is downloaded on first use."""

from __future__ import annotations

import urllib.error
from pathlib import Path

from modules import paths_internal, shared

RELEASES = "https://github.com/AUTOMATIC1111/stable-diffusion-webui/releases/download/v1.0.0-pre/"


def model_name() -> str:
    return "vaeapprox-sdxl.pt" if getattr(getattr(shared, "sd_model", None), "is_sdxl", False) else "model.pt"


def model():
    name = model_name()
    if name == "model.pt":
        return Path(paths_internal.script_path) / "models" / "VAE-approx" / name  # in the WebUI's repository
    for folder in (Path(paths_internal.models_path), Path(paths_internal.script_path) / "models"):
        if (folder / "VAE-approx" / name).exists():
            return folder / "VAE-approx" / name
    print(f"Downloading VAEApprox model to: {Path(paths_internal.models_path) / 'VAE-approx' / name}")
    raise urllib.error.URLError(f"[Errno -3] Temporary failure in name resolution ({RELEASES}{name})")
