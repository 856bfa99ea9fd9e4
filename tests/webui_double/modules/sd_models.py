"""Double of modules/sd_models.py: the checkpoint list (files in models/Stable-diffusion), nothing loaded."""

from __future__ import annotations

from pathlib import Path

from modules import paths_internal

model_path = str(Path(paths_internal.models_path, "Stable-diffusion").absolute())
checkpoints_list = {}
checkpoint_aliases = {}
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
VAE_SUFFIXES = (".vae.ckpt", ".vae.safetensors")


class CheckpointInfo:
    """Names as the real one derives them; without a cached sha256 the title is the relative name."""

    def __init__(self, filename):
        self.filename = filename
        path = Path(filename).absolute()
        inside_models = path.is_relative_to(model_path)
        self.name = path.relative_to(model_path).as_posix() if inside_models else path.name
        self.name_for_extra = path.stem
        self.model_name = Path(self.name.replace("/", "_").replace("\\", "_")).stem
        self.title = self.name
        self.short_title = self.name_for_extra
        self.ids = [self.model_name, self.title, self.name, self.name_for_extra]

    def register(self):
        """As the real one: listed under its title, findable under every id (process_images only
        honours a checkpoint override found in checkpoint_aliases)."""
        checkpoints_list[self.title] = self
        for checkpoint_id in self.ids:
            checkpoint_aliases[checkpoint_id] = self


def checkpoint_tiles(use_short=False):
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


def list_models():
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    for path in sorted(Path(model_path).rglob("*")):
        lowered = path.name.lower()
        if path.is_file() and lowered.endswith(CHECKPOINT_SUFFIXES) and not lowered.endswith(VAE_SUFFIXES):
            CheckpointInfo(str(path)).register()


def select_checkpoint():
    """As the real one: the settings' checkpoint if known, else the first listed; FileNotFoundError if none."""
    from modules import shared

    model_checkpoint = shared.opts.sd_model_checkpoint
    checkpoint_info = checkpoint_aliases.get(model_checkpoint)
    if checkpoint_info is not None:
        return checkpoint_info
    if len(checkpoints_list) == 0:
        raise FileNotFoundError(f"No checkpoints found. When searching for checkpoints, looked at:\n - directory "
                                f"{model_path}Can't run without a checkpoint.")
    return next(iter(checkpoints_list.values()))


class SdModelData:
    """The real holder of the loaded model: `sd_model` is None until a model is loaded (the double loads
    none; a test may put one there). Reading `shared.sd_model` in the real WebUI loads one on demand."""

    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False


model_data = SdModelData()


def send_model_to_cpu(m):
    """As the real one for a model without --lowvram/--medvram: to the CPU (then the real one frees the
    GPU's cache)."""
    if m is not None:
        m.to("cpu")


def send_model_to_device(m):
    from modules import shared

    m.to(shared.device)


def unload_model_weights(sd_model=None, info=None):
    """The real one (what /sdapi/v1/unload-checkpoint calls): the model to RAM, nothing freed."""
    from modules import shared

    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model
