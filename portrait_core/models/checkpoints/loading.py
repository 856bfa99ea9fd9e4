"""A base model loaded offline into pipeline components, from a diffusers folder or a single `.safetensors` file.

A single file's weights are converted with diffusers' own LDM conversion functions into models built from
the configs `configs` gives (shipped for released layouts, inferred otherwise); every key is checked both
ways, so a file that does not fit is named rather than half loaded. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portrait_core.config import settings
from portrait_core.errors import CheckpointError
from portrait_core.log import get_logger
from portrait_core.models.checkpoints.configs import scheduler_config, single_file_configs
from portrait_core.models.checkpoints.family import (
    COMPONENT_PREFIXES,
    SD15_TEXT_PREFIX,
    SDXL_TEXT2_PREFIX,
    SDXL_TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointInfo,
    inspect_checkpoint,
    normalize_ldm_key,
    read_json,
)
from portrait_core.models.checkpoints.header import explain_library_error, read_safetensors_header
from portrait_core.models.checkpoints.keymap import (
    open_clip_ldm_key,
    prefixed_key_map,
    unet_key_mapper,
    vae_key_mapper,
)
from portrait_core.models.tokenizer import END_TOKEN, load_clip_tokenizer, write_tokenizer_files

log = get_logger("checkpoints")

SDXL_SECOND_PAD_TOKEN = "!"  # noqa: S105 - SDXL's OpenCLIP tokenizer pads with "!" (id 0), not the end token


@dataclass(kw_only=True, eq=False)
class SDComponents:
    """The parts of a Stable Diffusion pipeline, loaded from one base model."""

    family: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    source: Path

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `StableDiffusion(XL)(Inpaint/ControlNet)Pipeline(...)`."""
        parts = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                 "tokenizer": self.tokenizer, "scheduler": self.scheduler}
        if self.text_encoder_2 is not None:
            parts.update(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
        else:
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return parts


# ---------------------------------------------------------------------------------------------
# Loading


def load_components(path: Path | str, *, dtype=None, cache_dir: Path | str | None = None) -> SDComponents:
    """Load a base model (diffusers folder or single `.safetensors` file) offline; dtype defaults to float32.

    `cache_dir` (default: the settings' cache folder) holds the CLIP tokenizers a single file lacks.
    """
    import torch

    info = inspect_checkpoint(path)
    if info.is_controlnet:
        raise CheckpointError(f"{info.path} is a ControlNet ({info.family}), not a base model")
    dtype = dtype or torch.float32
    log.info("loading %s (%s, %s)", info.path, info.family, info.format)
    if info.format == "diffusers":
        return _load_diffusers_folder(info, dtype)
    if info.base_family == "sd2":
        raise CheckpointError(f"{info.path}: SD2 single-file checkpoints are not supported (whether one predicts "
                              "noise or velocity cannot be told from its weights); use a diffusers folder")
    return _load_single_file(info, dtype, Path(cache_dir) if cache_dir else settings().cache_dir)


def _load_diffusers_folder(info: CheckpointInfo, dtype) -> SDComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder, sdxl = info.path, info.base_family == "sdxl"
    weights = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    if sdxl:
        weights["text_encoder_2"] = CLIPTextModelWithProjection
    parts = {}
    for subfolder, model_class in weights.items():
        _check_folder_weights(folder / subfolder)
        parts[subfolder] = _from_pretrained(model_class, folder, subfolder, torch_dtype=dtype,
                                            use_safetensors=True)
    for subfolder in ("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",):
        parts[subfolder] = _from_pretrained(CLIPTokenizer, folder, subfolder)
    return SDComponents(family=info.family, scheduler=_folder_scheduler(folder), source=folder, **parts)


def _check_folder_weights(subfolder: Path) -> None:
    weight_files = sorted(subfolder.glob("*.safetensors"))
    if not weight_files:
        raise CheckpointError(f"{subfolder} holds no .safetensors weights (only safetensors are read)")
    for weight_file in weight_files:
        read_safetensors_header(weight_file)


def _from_pretrained(model_class, folder: Path, subfolder: str, **kwargs):
    from safetensors import SafetensorError

    try:
        return model_class.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(f"{folder / subfolder}: cannot load {model_class.__name__} ({error})") from error


def _folder_scheduler(folder: Path):
    import diffusers

    config_file = folder / "scheduler" / "scheduler_config.json"
    class_name = read_json(config_file).get("_class_name", "")
    scheduler_class = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise CheckpointError(f"{config_file}: unknown scheduler class {class_name!r}")
    return _from_pretrained(scheduler_class, folder, "scheduler")


@dataclass(frozen=True)
class _SingleFile:
    """One single-file checkpoint being loaded: its tensors (component keys), their configs, the target dtype."""

    path: Path
    state: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    dtype: Any


def _load_single_file(info: CheckpointInfo, dtype, cache_dir: Path) -> SDComponents:
    header = read_safetensors_header(info.path)
    shapes = {normalize_ldm_key(key): shape for key, shape in header.shapes.items()}
    source = _SingleFile(path=info.path, dtype=dtype,
                         configs=single_file_configs(info.family, shapes, header.metadata, info.path),
                         state=_read_component_tensors(info.path, COMPONENT_PREFIXES[info.base_family]))
    parts = {}
    if info.base_family == "sdxl":
        parts["text_encoder"] = _clip_text_from_file(source, SDXL_TEXT_PREFIX)
        parts["text_encoder_2"] = _open_clip_text_from_file(source)
        parts["tokenizer_2"] = cached_clip_tokenizer(SDXL_SECOND_PAD_TOKEN, cache_dir)
    else:
        parts["text_encoder"] = _clip_text_from_file(source, SD15_TEXT_PREFIX)
    parts["unet"] = _unet_from_file(source)
    parts["vae"] = _vae_from_file(source)
    return SDComponents(family=info.family, tokenizer=cached_clip_tokenizer(END_TOKEN, cache_dir),
                        scheduler=default_scheduler(), source=info.path, **parts)


def _read_component_tensors(path: Path, prefixes: tuple[str, ...]) -> dict:
    """The tensors under the model's component prefixes (EMA copies and schedule buffers are skipped)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as reader:
            names = list(reader.keys())
            state = {normalize_ldm_key(name): reader.get_tensor(name)
                     for name in names if normalize_ldm_key(name).startswith(prefixes)}
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot read its tensors ({explain_library_error(error)})") from error
    skipped = len(names) - len(state)
    if skipped:
        log.debug("%s: %d tensors outside the model's components ignored (EMA, schedule buffers)", path, skipped)
    return state


def cached_clip_tokenizer(pad_token: str, cache_dir: Path):
    """The CLIP tokenizer (padding with `pad_token`), written once into the cache folder."""
    folder = cache_dir / "clip-tokenizers" / ("pad-end" if pad_token == END_TOKEN else f"pad-{ord(pad_token)}")
    if not (folder / "tokenizer_config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            write_tokenizer_files(staging, pad_token=pad_token)
            staging.rename(folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (folder / "tokenizer_config.json").is_file():  # not a race another process won
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return load_clip_tokenizer(folder)


def default_scheduler():
    """SD1.5/SDXL's noise schedule for a single file (which stores none); hosts swap it per sampler."""
    from diffusers import EulerAncestralDiscreteScheduler

    accepted = inspect.signature(EulerAncestralDiscreteScheduler.__init__).parameters
    return EulerAncestralDiscreteScheduler.from_config(
        {key: value for key, value in scheduler_config().items() if key in accepted})


# ---------------------------------------------------------------------------------------------
# Building each component from the file: build it empty, check keys strictly, convert, assign


def _unet_from_file(source: _SingleFile):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = source.configs["unet"]
    model = _build_empty(UNet2DConditionModel.from_config, config)
    mapper = unet_key_mapper(model.state_dict(), config["layers_per_block"])
    return _fill_component(source, "UNet", model, mapper, prefix=UNET_PREFIX,
                           convert=lambda part: convert_ldm_unet_checkpoint(part, config))


def _vae_from_file(source: _SingleFile):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = source.configs["vae"]
    model = _build_empty(AutoencoderKL.from_config, config)
    return _fill_component(source, "VAE", model, vae_key_mapper(len(config["block_out_channels"])),
                           prefix=VAE_PREFIX, convert=lambda part: convert_ldm_vae_checkpoint(part, config))


def _clip_text_from_file(source: _SingleFile, prefix: str):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    model = _build_empty(CLIPTextModel, CLIPTextConfig(**source.configs["text_encoder"]))
    # position_ids is a constant buffer: the model's own is kept, and merged checkpoints often
    # carry a float-rounded copy of it, so the file's copy is optional and never used.
    return _fill_component(source, "text encoder", model, lambda key: key, prefix=prefix,
                           convert=lambda part: convert_ldm_clip_checkpoint(part, remove_prefix=prefix),
                           optional={prefix + "text_model.embeddings.position_ids"})


def _open_clip_text_from_file(source: _SingleFile):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    prefix = SDXL_TEXT2_PREFIX
    model = _build_empty(CLIPTextModelWithProjection, CLIPTextConfig(**source.configs["text_encoder_2"]))
    return _fill_component(source, "second text encoder", model, open_clip_ldm_key, prefix=prefix,
                           convert=lambda part: convert_open_clip_checkpoint(model, part, prefix=prefix),
                           optional={prefix + "logit_scale"})


def _build_empty(factory, *args):
    """Build a model with its parameters on the meta device: the file's tensors are assigned later."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory(*args)


def _fill_component(source: _SingleFile, what: str, model, mapper, *, prefix: str, convert,
                    optional=frozenset()):
    """Check the file's keys against the model's, convert them with diffusers, and load strictly."""
    key_map = prefixed_key_map(source.path, what, model.state_dict(), mapper, prefix)
    file_state = _take(source.state, prefix)
    expected = {ldm_key for ldm_key in key_map.values() if ldm_key} - set(optional)
    _require_same_keys(source.path, what, expected, set(file_state) - set(optional))
    converted = {key: value.to(source.dtype) if value.is_floating_point() else value
                 for key, value in convert(file_state).items()}
    # Buffers were built for real (only parameters are on meta); they are constants, so keep ours.
    converted.update({key: value for key, value in model.state_dict().items() if not value.is_meta})
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as error:
        detail = " ".join(str(error).strip().splitlines()[:4])[:600]
        raise CheckpointError(f"{source.path}: the {what} weights do not fit the architecture read from "
                              f"the file: {detail}") from error
    return model.eval()


def _require_same_keys(path: Path, what: str, expected: set[str], present: set[str]) -> None:
    missing, leftover = sorted(expected - present), sorted(present - expected)
    problems = [f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})"
                for label, keys in (("missing", missing), ("left over", leftover)) if keys]
    if problems:
        raise CheckpointError(f"{path}: the {what} keys do not match the architecture read from the "
                              f"file: {'; '.join(problems)}")


def _take(state: dict, prefix: str) -> dict:
    """The tensors under `prefix`, removed from `state` so that each is freed once its model holds a copy."""
    return {key: state.pop(key) for key in [key for key in state if key.startswith(prefix)]}

