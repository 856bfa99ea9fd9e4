"""Checkpoints with the layouts of real released files (`../shared/data/layouts/`), not our exporter's.

Each layout file lists the tensor names and shapes of a real checkpoint. The test files are written here
byte by byte (header JSON, then the data), with neither our exporter nor safetensors' writer: every small
tensor (norms, biases, 1x1 projections up to FILL_LIMIT values) and the hand-mapped ones below get random
fp16 values; the large weights are zeros left as holes of a sparse file, so a full-size SD1.5 (2.1 GB at
fp16) takes a few MB of disk and loads in seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_core.models.checkpoints.configs import known_configs, single_file_configs
from portrait_core.models.checkpoints.family import inspect_checkpoint, normalize_ldm_key
from portrait_core.models.checkpoints.header import read_safetensors_header
from portrait_core.models.checkpoints.loading import SDComponents, load_components
from portrait_core.models.export import components_to_ldm, export_single_file

LAYOUTS_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "layouts"
# Every layout in the shared folder, and the family a reader must tell from it.
LAYOUT_FAMILIES = {"sd15-ldm-checkpoint.json": "sd15"}
FILL_LIMIT = 100_000
SCHEDULE_BUFFERS = {"alphas_cumprod", "alphas_cumprod_prev", "betas", "log_one_minus_alphas_cumprod",
                    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                    "posterior_variance", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"}
# Where diffusers keeps some weights of the WebUI's layout (read off diffusers' own model classes).
MAPPED_BY_HAND = {
    "model.diffusion_model.input_blocks.0.0.weight": ("unet", "conv_in.weight"),
    "model.diffusion_model.time_embed.0.weight": ("unet", "time_embedding.linear_1.weight"),
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": ("unet", "down_blocks.0.attentions.0.proj_in.weight"),
    "model.diffusion_model.input_blocks.3.0.op.bias": ("unet", "down_blocks.0.downsamplers.0.conv.bias"),
    "model.diffusion_model.middle_block.2.in_layers.0.weight": ("unet", "mid_block.resnets.1.norm1.weight"),
    "model.diffusion_model.output_blocks.2.1.conv.bias": ("unet", "up_blocks.0.upsamplers.0.conv.bias"),
    "model.diffusion_model.output_blocks.5.2.conv.bias": ("unet", "up_blocks.1.upsamplers.0.conv.bias"),
    "model.diffusion_model.out.0.weight": ("unet", "conv_norm_out.weight"),
    "first_stage_model.encoder.mid.attn_1.q.weight": ("vae", "encoder.mid_block.attentions.0.to_q.weight"),
    "first_stage_model.decoder.up.0.block.0.conv1.bias": ("vae", "decoder.up_blocks.3.resnets.0.conv1.bias"),
    "first_stage_model.quant_conv.bias": ("vae", "quant_conv.bias"),
    "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight": (
        "text_encoder", "text_model.encoder.layers.11.self_attn.q_proj.weight"),
    "cond_stage_model.transformer.text_model.final_layer_norm.bias": (
        "text_encoder", "text_model.final_layer_norm.bias"),
}
COMPONENT_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                      "text_encoder": "cond_stage_model.transformer."}
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def read_layout(name: str) -> dict[str, tuple[int, ...]]:
    path = LAYOUTS_DIR / name
    if not path.is_file():
        pytest.skip(f"shared layouts not found at {LAYOUTS_DIR} (clone the shared/ folder beside the repo)")
    tensors = json.loads(path.read_text(encoding="utf-8"))["tensors"]
    return {key: tuple(entry["shape"]) for key, entry in tensors.items()}


def layout_values(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Random small values for the tensors a test checks; position_ids as real files store them."""
    rng = np.random.default_rng(seed)
    chosen = sorted(key for key, shape in shapes.items()
                    if (math.prod(shape) <= FILL_LIMIT or key in MAPPED_BY_HAND) and key not in SCHEDULE_BUFFERS)
    values = {key: (rng.standard_normal(shapes[key]) * 0.02).astype(np.float16) for key in chosen}
    if POSITION_IDS in shapes:
        values[POSITION_IDS] = np.arange(shapes[POSITION_IDS][-1], dtype=np.int64).reshape(shapes[POSITION_IDS])
    return values


def write_layout_file(path: Path, shapes: dict[str, tuple[int, ...]], values: dict[str, np.ndarray]) -> Path:
    """A .safetensors file with exactly these tensors (fp16; int64 where a value says so); unset ones are zeros."""
    header, offsets, end = {}, {}, 0
    for key in sorted(shapes):
        dtype, width = ("I64", 8) if key in values and values[key].dtype == np.int64 else ("F16", 2)
        size = math.prod(shapes[key]) * width
        header[key] = {"dtype": dtype, "shape": list(shapes[key]), "data_offsets": [end, end + size]}
        offsets[key], end = end, end + size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads its header with spaces to 8 bytes
    data_start = 8 + len(raw)
    with path.open("wb") as stream:
        stream.write(len(raw).to_bytes(8, "little") + raw)
        stream.truncate(data_start + end)  # a hole of zeros, no disk blocks
        for key, value in values.items():
            stream.seek(data_start + offsets[key])
            stream.write(np.ascontiguousarray(value).tobytes())
    return path


def inpainting_variant(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The released inpainting model of the same family differs in one tensor: a 9-channel conv_in."""
    key = "model.diffusion_model.input_blocks.0.0.weight"
    return {**shapes, key: (shapes[key][0], 9, *shapes[key][2:])}


@pytest.fixture(scope="module")
def sd15_layout() -> dict[str, tuple[int, ...]]:
    return read_layout("sd15-ldm-checkpoint.json")


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict[str, tuple[Path, dict, dict]]:
    """Files of each real layout and its inpainting variant: {family: (path, shapes, values written)}."""
    folder = tmp_path_factory.mktemp("genuine-layouts")
    files = {}
    for seed, (name, family) in enumerate(sorted(LAYOUT_FAMILIES.items())):
        layout = read_layout(name)
        for variant, shapes in ((family, layout), (f"{family}-inpaint", inpainting_variant(layout))):
            values = layout_values(shapes, seed)
            files[variant] = (write_layout_file(folder / f"{variant}.safetensors", shapes, values), shapes, values)
    return files


def test_every_shared_layout_has_a_family_to_check():
    if not LAYOUTS_DIR.is_dir():
        pytest.skip(f"shared layouts not found at {LAYOUTS_DIR}")
    assert {path.name for path in LAYOUTS_DIR.glob("*.json")} == set(LAYOUT_FAMILIES), \
        "a layout was added to shared/data/layouts: add it and its family to LAYOUT_FAMILIES"


def test_the_header_of_a_real_layout_is_read_exactly(genuine, no_tensor_reads):
    for path, shapes, _ in genuine.values():
        header = read_safetensors_header(path)
        assert header.shapes == shapes
        assert header.dtypes[POSITION_IDS] == "I64"
        assert {dtype for key, dtype in header.dtypes.items() if key != POSITION_IDS} == {"F16"}
        assert header.metadata == {}
        assert path.stat().st_size > 2_000_000_000  # the full-size file, as a user's would be


@pytest.mark.parametrize("family", [variant for family in LAYOUT_FAMILIES.values()
                                    for variant in (family, f"{family}-inpaint")])
def test_each_real_layout_is_told_apart_and_gets_its_shipped_configs(genuine, family, no_tensor_reads):
    path, _, _ = genuine[family]
    info = inspect_checkpoint(path)
    assert (info.family, info.format, info.is_controlnet) == (family, "single-file", False)
    assert info.in_channels == (9 if family.endswith("-inpaint") else 4)
    shapes = {normalize_ldm_key(key): shape for key, shape in read_safetensors_header(path).shapes.items()}
    assert single_file_configs(info.family, shapes, {}, path) == known_configs(family)


def test_a_custom_layout_gets_configs_inferred_from_its_shapes(tiny_sd15_file):
    header = read_safetensors_header(tiny_sd15_file)
    configs = single_file_configs("sd15", header.shapes, header.metadata, tiny_sd15_file)
    assert configs != known_configs("sd15")
    assert configs["unet"]["block_out_channels"] == [32, 32, 64, 64]
    assert configs["unet"]["attention_head_dim"] == 4  # the exporter's note, not SD1.5's 8 heads


@pytest.fixture(scope="module")
def loaded_sd15(genuine, tmp_path_factory) -> SDComponents:
    """The real SD1.5 layout loaded at fp16 (at fp32 it would take ~4.3 GB; see the slow test), offline."""
    path = genuine["sd15"][0]

    def no_network(*_args, **_kwargs):
        raise AssertionError("tried to open a network connection")

    before = sorted(path.parent.iterdir())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        patch.setattr(socket, "getaddrinfo", no_network)
        components = load_components(path, dtype=torch.float16, cache_dir=tmp_path_factory.mktemp("tokenizers"))
    assert sorted(path.parent.iterdir()) == before  # nothing written beside the checkpoint
    return components


def test_the_real_sd15_layout_loads_with_every_parameter_of_the_file(loaded_sd15, sd15_layout):
    assert loaded_sd15.family == "sd15" and loaded_sd15.text_encoder_2 is None
    for part, prefix in COMPONENT_PREFIXES.items():
        in_file = sum(math.prod(shape) for key, shape in sd15_layout.items()
                      if key.startswith(prefix) and key != POSITION_IDS)
        model = getattr(loaded_sd15, part)
        assert sum(parameter.numel() for parameter in model.parameters()) == in_file, part
        assert {parameter.dtype for parameter in model.parameters()} == {torch.float16}, part
    assert loaded_sd15.unet.config.attention_head_dim == 8
    assert loaded_sd15.text_encoder.config.projection_dim == 768  # only the shipped config says so
    assert loaded_sd15.vae.config.scaling_factor == 0.18215
    assert loaded_sd15.tokenizer("a photo").input_ids == [49406, 320, 1125, 49407]


def _fingerprint(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_every_weight_of_the_real_sd15_layout_lands_where_diffusers_keeps_it(loaded_sd15, genuine):
    _, _, values = genuine["sd15"]
    written = {key: value for key, value in values.items() if key != POSITION_IDS}
    sizes = {value.size for value in written.values()}
    loaded = {_fingerprint(tensor.numpy()) for part in COMPONENT_PREFIXES
              for tensor in getattr(loaded_sd15, part).state_dict().values() if tensor.numel() in sizes}
    lost = [key for key, value in written.items() if _fingerprint(value) not in loaded]
    assert not lost, f"{len(lost)} of {len(written)} tensors not found in the loaded model, e.g. {lost[:3]}"
    for ldm_key, (part, diffusers_key) in MAPPED_BY_HAND.items():
        tensor = getattr(loaded_sd15, part).state_dict()[diffusers_key]
        expected = torch.from_numpy(values[ldm_key]).reshape(tensor.shape)  # LDM keeps VAE attention as 1x1 convs
        assert torch.equal(tensor, expected), ldm_key


def _empty_sd15() -> SDComponents:
    """Full-size SD1.5 components from the shipped configs, with parameters on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = known_configs("sd15")
    with init_empty_weights():
        return SDComponents(family="sd15", unet=UNet2DConditionModel.from_config(configs["unet"]),
                            vae=AutoencoderKL.from_config(configs["vae"]),
                            text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
                            tokenizer=None, scheduler=None, source=Path("empty SD1.5"))


def test_our_export_writes_the_real_sd15_layout(sd15_layout):
    exported = {key: tuple(tensor.shape) for key, tensor in components_to_ldm(_empty_sd15()).items()}
    expected = {key: shape for key, shape in sd15_layout.items() if key not in SCHEDULE_BUFFERS}
    assert exported == expected


@pytest.mark.slow
def test_the_real_sd15_layout_loads_at_float32_and_exports_back_to_it(genuine, sd15_layout, tmp_path):
    """What DiffusersHost does on a CPU (float32, ~4.3 GB), and our exporter's copy of the result."""
    path, _, values = genuine["sd15"]
    loaded = load_components(path, cache_dir=tmp_path)
    assert loaded.unet.conv_in.weight.dtype == torch.float32
    conv_in = torch.from_numpy(values["model.diffusion_model.input_blocks.0.0.weight"]).float()
    assert torch.equal(loaded.unet.conv_in.weight, conv_in)

    copy = export_single_file(loaded, tmp_path / "copy.safetensors", dtype=torch.float16)
    del loaded
    expected = {key: shape for key, shape in sd15_layout.items() if key not in SCHEDULE_BUFFERS}
    assert read_safetensors_header(copy).shapes == expected
    assert inspect_checkpoint(copy).family == "sd15"
