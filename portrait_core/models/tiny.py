"""Tiny Stable Diffusion models built locally: the demo's and the tests' stand-in for a real checkpoint.

They have the real shapes' *structure* (SD1.5: a UNet with cross-attention, an 8x-downscaling
four-block VAE, a CLIP text encoder with the real tokenizer; SDXL: two text encoders and the
text-time conditioning; ControlNets for canny, openpose, tile and color; a colour T2I-Adapter; IP-Adapters with a CLIP
vision encoder, in folders of their own) at a tiny width, with random weights drawn from a fixed seed.
They draw noise-like pictures: they exercise every code path of the pipeline at CPU speed, not the
look of a real model.

Built once into the cache folder, keyed by `TINY_MODEL_VERSION`; an existing build is reused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from portrait_core.config import settings
from portrait_core.log import get_logger
from portrait_core.models.checkpoints.configs import scheduler_config
from portrait_core.models.tokenizer import END_TOKEN, write_tokenizer_files

log = get_logger("tiny_sd")

# Bump when anything below changes the weights or layout: old caches are then ignored.
TINY_MODEL_VERSION = 3  # 2: t2iadapter-color/ beside the ControlNets; 3: control images reach the ControlNets
TINY_IP_ADAPTER_VERSION = 1  # the IP-Adapter folders' own; they also depend on TINY_MODEL_VERSION's UNets
IP_ADAPTER_FAMILIES = ("sd15", "sdxl")
IMAGE_EMBED_DIM = 32  # the tiny CLIP vision encoder's projected image embedding
IP_ADAPTER_TOKENS = 4  # a plain IP-Adapter turns the image embedding into 4 extra context tokens
CONTROL_KINDS = ("canny", "openpose", "tile", "color")
SDXL_CONTROL_KINDS = ("canny", "openpose")
ADAPTER_KINDS = ("color",)  # T2I-Adapters, in t2iadapter-<kind>/ (the WebUI runs colour as t2iadapter_color_sd14v1)
MARKER_FILE = "portrait_tiny_model.json"



def tiny_model_dir(kind: str = "sd15", seed: int = 0, cache_dir: Path | None = None) -> Path:
    root = cache_dir or settings().cache_dir
    return root / "tiny-models" / f"{kind}-v{TINY_MODEL_VERSION}-seed{seed}"


def ensure_tiny_sd15(seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Path of the tiny SD1.5-shaped diffusers folder (with controlnet-<kind>/ subfolders), built if missing."""
    return _ensure(tiny_model_dir("sd15", seed, cache_dir), seed, _write_sd15)


def ensure_tiny_sdxl(seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Path of the tiny SDXL-shaped diffusers folder (two text encoders), built if missing."""
    return _ensure(tiny_model_dir("sdxl", seed, cache_dir), seed, _write_sdxl)


def tiny_ip_adapter_dir(family: str = "sd15", seed: int = 0, cache_dir: Path | None = None) -> Path:
    root = cache_dir or settings().cache_dir
    name = f"ip-adapter-{family}-v{TINY_IP_ADAPTER_VERSION}-m{TINY_MODEL_VERSION}-seed{seed}"
    return root / "tiny-models" / name


def ensure_tiny_ip_adapter(family: str = "sd15", seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Path of a tiny IP-Adapter folder for the tiny `family` ("sd15"/"sdxl") model, built if missing.

    It holds `ip-adapter_<family>.safetensors` (`image_proj.*` and `ip_adapter.<n>.to_k_ip/to_v_ip.*`,
    the layout of h94's files that diffusers' `load_ip_adapter` reads) and `image_encoder/` (a tiny
    `CLIPVisionModelWithProjection` with its `CLIPImageProcessor` config).
    """
    if family not in IP_ADAPTER_FAMILIES:
        raise ValueError(f"tiny IP-Adapters exist for {', '.join(IP_ADAPTER_FAMILIES)}, not {family!r}")

    def write(folder: Path, seed: int) -> None:
        _write_ip_adapter(folder, seed, family)

    return _ensure(tiny_ip_adapter_dir(family, seed, cache_dir), seed, write, kind=f"ip-adapter-{family}")


def _ensure(target: Path, seed: int, writer, kind: str | None = None) -> Path:
    if (target / MARKER_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building tiny model %s (once; cached)", target.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        writer(staging, seed)
        marker = {"version": TINY_MODEL_VERSION, "seed": seed, "kind": kind or target.name.split("-")[0]}
        (staging / MARKER_FILE).write_text(json.dumps(marker), encoding="utf-8")
        if target.exists():  # a build without a marker is an interrupted one
            shutil.rmtree(target)
        staging.rename(target)
    except FileExistsError:  # another process finished the same build first
        shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _seeded(seed: int, offset: int):
    import torch

    torch.manual_seed(seed * 1000 + offset)


def _text_config(projection: bool = False):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=32 if projection else 512, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )


def _vae(seed: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    _seeded(seed, 2)
    # Four blocks, like the real VAE: three of them halve the size, so latents are 1/8 of the image.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 32, 32), sample_size=64, scaling_factor=scaling_factor,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def _sd15_unet(seed: int):
    from diffusers import UNet2DConditionModel

    _seeded(seed, 1)
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


def _sdxl_unet(seed: int):
    from diffusers import UNet2DConditionModel

    _seeded(seed, 11)
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(32, 64, 64), cross_attention_dim=64, attention_head_dim=(2, 4, 8),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32,
    )


def _controlnet(unet, seed: int, offset: int):
    import torch
    from diffusers import ControlNetModel

    _seeded(seed, offset)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    # A real ControlNet starts with zero output convolutions and learns them; an untrained tiny one
    # gets small random ones instead, so that each control visibly steers the result. That includes the
    # conditioning embedding's last convolution: zero, the control image would never reach the network.
    zero_at_start = ("zero_conv", "controlnet_down_blocks", "controlnet_mid_block",
                     "controlnet_cond_embedding.conv_out")
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if any(part in name for part in zero_at_start):
                parameter.normal_(0.0, 0.05)
    return controlnet


def _t2i_adapter(unet, seed: int, offset: int):
    """A light T2I-Adapter (the colour adapter's architecture) whose features fit `unet`'s down blocks."""
    from diffusers import T2IAdapter

    _seeded(seed, offset)
    widths = list(unet.config.block_out_channels)
    return T2IAdapter(in_channels=3, channels=widths[:-1], num_res_blocks=1, downscale_factor=8,
                      adapter_type="light_adapter")


def _save_common(folder: Path, unet, vae, scheduler) -> None:
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")


def _write_sd15(folder: Path, seed: int) -> None:
    from diffusers import EulerAncestralDiscreteScheduler
    from transformers import CLIPTextModel

    unet = _sd15_unet(seed)
    _seeded(seed, 3)
    text_encoder = CLIPTextModel(_text_config())
    _save_common(folder, unet, _vae(seed, 0.18215), EulerAncestralDiscreteScheduler(**_scheduler_kwargs()))
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    write_tokenizer_files(folder / "tokenizer", pad_token=END_TOKEN)
    for offset, kind in enumerate(CONTROL_KINDS, start=20):
        _controlnet(unet, seed, offset).save_pretrained(folder / f"controlnet-{kind}", safe_serialization=True)
    for offset, kind in enumerate(ADAPTER_KINDS, start=50):
        _t2i_adapter(unet, seed, offset).save_pretrained(folder / f"t2iadapter-{kind}", safe_serialization=True)
    _write_model_index(folder, "StableDiffusionPipeline", text_encoders=1)


def _write_sdxl(folder: Path, seed: int) -> None:
    from diffusers import EulerAncestralDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = _sdxl_unet(seed)
    _seeded(seed, 13)
    text_encoder = CLIPTextModel(_text_config())
    _seeded(seed, 14)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection=True))
    _save_common(folder, unet, _vae(seed, 0.13025), EulerAncestralDiscreteScheduler(**_scheduler_kwargs()))
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    text_encoder_2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    write_tokenizer_files(folder / "tokenizer", pad_token=END_TOKEN)
    write_tokenizer_files(folder / "tokenizer_2", pad_token="!")  # noqa: S106 - SDXL pads its second tokenizer with "!"
    for offset, kind in enumerate(SDXL_CONTROL_KINDS, start=30):
        _controlnet(unet, seed, offset).save_pretrained(folder / f"controlnet-{kind}", safe_serialization=True)
    _write_model_index(folder, "StableDiffusionXLPipeline", text_encoders=2)


def _image_encoder(seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _seeded(seed, 40)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=IMAGE_EMBED_DIM,
                              num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    return CLIPVisionModelWithProjection(config)


def _ip_adapter_tensors(unet, seed: int) -> dict:
    """A plain IP-Adapter's tensors for `unet`: the image projection to IP_ADAPTER_TOKENS tokens of the
    UNet's text width, and a key and a value projection per cross-attention layer. The layers are
    numbered 1, 3, 5, ... in the UNet's attention-processor order, as in h94's files (the original
    numbering counted self- and cross-attention alike)."""
    import torch

    width = unet.config.cross_attention_dim
    _seeded(seed, 41)
    # Random but not tiny, so that the image prompt visibly steers the tiny model.
    tensors = {"image_proj.proj.weight": torch.randn(IP_ADAPTER_TOKENS * width, IMAGE_EMBED_DIM) * 0.1,
               "image_proj.proj.bias": torch.zeros(IP_ADAPTER_TOKENS * width),
               "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    cross_attention = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
    for position, name in enumerate(cross_attention):
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        tensors[f"ip_adapter.{2 * position + 1}.to_k_ip.weight"] = torch.randn(hidden, width) * 0.2
        tensors[f"ip_adapter.{2 * position + 1}.to_v_ip.weight"] = torch.randn(hidden, width) * 0.2
    return tensors


def _write_ip_adapter(folder: Path, seed: int, family: str) -> None:
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    unet = _sd15_unet(seed) if family == "sd15" else _sdxl_unet(seed)  # only its layout is read
    encoder_folder = folder / "image_encoder"
    _image_encoder(seed).save_pretrained(encoder_folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        encoder_folder)
    save_file(_ip_adapter_tensors(unet, seed), str(folder / f"ip-adapter_{family}.safetensors"))


def _scheduler_kwargs() -> dict:
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "steps_offset",
            "prediction_type", "timestep_spacing")
    schedule = scheduler_config()
    return {key: schedule[key] for key in keep}


def _write_model_index(folder: Path, pipeline_class: str, text_encoders: int) -> None:
    index = {
        "_class_name": pipeline_class, "_diffusers_version": "0.31.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    if text_encoders == 2:
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
