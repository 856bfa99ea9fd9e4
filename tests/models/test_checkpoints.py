"""Base models: telling checkpoints apart, single-file round trips, bad files, atomic export, offline loads."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import stat
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from safetensors.torch import load_file, save_file

from portrait_core.errors import CheckpointError
from portrait_core.models import checkpoints
from portrait_core.models.checkpoints import (
    CONFIG_HINTS_KEY,
    SDComponents,
    export_single_file,
    inspect_checkpoint,
    load_components,
    read_safetensors_header,
    short_hash,
)

PROMPT_IDS = [49406, 320, 1125, 539, 550, 18376, 49407]  # "a photo of an astronaut" in the real CLIP vocabulary


# The brief asks for module-scoped models; the session fixtures in conftest.py (tiny_sd15, tiny_sdxl)
# already build them once into a pytest tmp folder, so they are reused rather than built twice.


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def tokenizer_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="module")
def sd15_file(tiny_sd15, exports) -> Path:
    return export_single_file(tiny_sd15, exports / "tiny-sd15.safetensors")


@pytest.fixture(scope="module")
def sdxl_file(tiny_sdxl, exports) -> Path:
    return export_single_file(tiny_sdxl, exports / "tiny-sdxl.safetensors")


@pytest.fixture(scope="module")
def sd15_reference(tiny_sd15) -> SDComponents:
    return load_components(tiny_sd15)


def _public_config(config) -> dict:
    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    dropped = {"architectures", "torch_dtype", "transformers_version", "_name_or_path"}
    return {key: value for key, value in items.items() if not key.startswith("_") and key not in dropped}


def _assert_same_weights(expected, actual, what: str) -> None:
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert expected_state.keys() == actual_state.keys(), what
    different = [key for key in expected_state if not torch.equal(expected_state[key], actual_state[key])]
    assert not different, f"{what}: {different[:5]}"


def _write_tensors(path: Path, shapes: dict[str, tuple[int, ...]], metadata=None) -> Path:
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(path), metadata=metadata)
    return path


# ---------------------------------------------------------------------------------------------
# Round trips


def test_sd15_single_file_loads_back_exactly(sd15_file, sd15_reference, tokenizer_cache):
    loaded = load_components(sd15_file, cache_dir=tokenizer_cache)

    assert loaded.family == "sd15" and loaded.source == sd15_file and loaded.text_encoder_2 is None
    for part in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(sd15_reference, part), getattr(loaded, part), part)
        assert _public_config(getattr(loaded, part).config) == _public_config(getattr(sd15_reference, part).config)
    assert loaded.tokenizer("a photo of an astronaut").input_ids == PROMPT_IDS
    assert loaded.tokenizer.pad_token == "<|endoftext|>"
    assert type(loaded.scheduler) is type(sd15_reference.scheduler)
    assert torch.equal(loaded.scheduler.betas, sd15_reference.scheduler.betas)


def test_sd15_single_file_renders_the_same_image_as_the_folder(sd15_file, sd15_reference, tokenizer_cache):
    from diffusers import StableDiffusionPipeline

    def render(components):
        pipeline = StableDiffusionPipeline(**components.pipeline_kwargs())
        pipeline.set_progress_bar_config(disable=True)
        return pipeline("a photo of an astronaut", num_inference_steps=2, height=64, width=64,
                        generator=torch.Generator().manual_seed(3), output_type="np").images

    single_file_image = render(load_components(sd15_file, cache_dir=tokenizer_cache))
    assert single_file_image.shape == (1, 64, 64, 3)
    assert (single_file_image == render(sd15_reference)).all()


def test_sd15_export_uses_the_webui_key_names(sd15_file):
    header = read_safetensors_header(sd15_file)
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(key.startswith(prefixes) for key in header.shapes)
    # The tiny UNet has one resnet per level: its first up level has no attention, the others do.
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.time_embed.2.bias",
                "model.diffusion_model.output_blocks.1.1.conv.weight",
                "model.diffusion_model.output_blocks.3.2.conv.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight", "first_stage_model.encoder.norm_out.bias",
                "first_stage_model.post_quant_conv.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in header.shapes, key
    assert len(header.shapes["first_stage_model.encoder.mid.attn_1.q.weight"]) == 4  # LDM keeps 1x1 convs
    assert header.metadata["modelspec.architecture"] == "stable-diffusion-v1"


def test_loading_writes_nothing_next_to_the_checkpoint(sd15_file, tokenizer_cache):
    before = sorted(sd15_file.parent.iterdir())
    load_components(sd15_file, cache_dir=tokenizer_cache)
    assert sorted(sd15_file.parent.iterdir()) == before


def test_sdxl_single_file_loads_back_exactly(tiny_sdxl, sdxl_file, tokenizer_cache):
    reference = load_components(tiny_sdxl)
    loaded = load_components(sdxl_file, cache_dir=tokenizer_cache)

    assert loaded.family == "sdxl"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _assert_same_weights(getattr(reference, part), getattr(loaded, part), part)
        assert _public_config(getattr(loaded, part).config) == _public_config(getattr(reference, part).config)
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():  # the fused q/k/v and the transposed projection come apart as they went in
        assert torch.equal(loaded.text_encoder_2(ids).text_embeds, reference.text_encoder_2(ids).text_embeds)
    assert loaded.tokenizer_2.pad_token == "!"
    assert set(loaded.pipeline_kwargs()) >= {"text_encoder_2", "tokenizer_2", "unet", "scheduler"}


def test_webui_quirks_load_old_clip_names_and_skip_ema_and_schedule_tensors(sd15_file, sd15_reference, tmp_path,
                                                                         tokenizer_cache):
    state = load_file(sd15_file)
    old_prefix, new_prefix = "cond_stage_model.transformer.", "cond_stage_model.transformer.text_model."
    quirky = {key.replace(new_prefix, old_prefix): value for key, value in state.items()}
    quirky[old_prefix + "embeddings.position_ids"] = torch.arange(77.0)[None] + 1e-4  # a merge-rounded copy
    quirky.update({"alphas_cumprod": torch.ones(1000), "model_ema.decay": torch.tensor(0.9999)})
    path = tmp_path / "quirky.safetensors"
    save_file(quirky, str(path), metadata=read_safetensors_header(sd15_file).metadata)

    loaded = load_components(path, cache_dir=tokenizer_cache)

    _assert_same_weights(sd15_reference.text_encoder, loaded.text_encoder, "text encoder")
    assert loaded.text_encoder.text_model.embeddings.position_ids.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# Telling files apart from the header alone


@pytest.fixture
def no_tensor_reads(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("inspect_checkpoint read tensors")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "safe_open", refuse)


@pytest.fixture
def crafted(tmp_path) -> dict[str, Path]:
    """Small files with the key names and shapes of real ones."""
    unet_in = "model.diffusion_model.input_blocks.0.0.weight"
    return {
        "sd15-inpaint": _write_tensors(tmp_path / "inpaint.safetensors", {
            unet_in: (8, 9, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (4, 8)}),
        "sd2": _write_tensors(tmp_path / "sd2.safetensors", {
            unet_in: (8, 4, 3, 3), "cond_stage_model.model.token_embedding.weight": (4, 8)}),
        "webui-controlnet": _write_tensors(tmp_path / "control_v11p_sd15_canny.safetensors", {
            "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
            "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}),
        "lora": _write_tensors(tmp_path / "person.safetensors", {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}),
    }


def test_inspect_tells_families_and_controlnets_apart_from_the_header(
        sd15_file, sdxl_file, tiny_sd15, tiny_sdxl, crafted, no_tensor_reads):
    def summary(path):
        info = inspect_checkpoint(path)
        return info.family, info.format, info.is_controlnet

    assert summary(sd15_file) == ("sd15", "single-file", False)
    assert summary(sdxl_file) == ("sdxl", "single-file", False)
    assert summary(crafted["sd15-inpaint"]) == ("sd15-inpaint", "single-file", False)
    assert summary(crafted["sd2"]) == ("sd2", "single-file", False)
    assert summary(crafted["webui-controlnet"]) == ("sd15", "single-file", True)
    assert summary(tiny_sd15) == ("sd15", "diffusers", False)
    assert summary(tiny_sdxl) == ("sdxl", "diffusers", False)
    assert summary(tiny_sd15 / "controlnet-canny") == ("sd15", "diffusers", True)
    assert summary(tiny_sd15 / "controlnet-canny" / "diffusion_pytorch_model.safetensors") == (
        "sd15", "single-file", True)
    assert summary(tiny_sdxl / "controlnet-canny") == ("sdxl", "diffusers", True)
    info = inspect_checkpoint(sd15_file)
    assert info.size_bytes == sd15_file.stat().st_size and info.in_channels == 4 and info.name == "tiny-sd15"
    assert inspect_checkpoint(crafted["sd15-inpaint"]).is_inpaint
    with pytest.raises(CheckpointError, match="LoRA") as error:
        inspect_checkpoint(crafted["lora"])
    assert str(crafted["lora"]) in str(error.value)


# ---------------------------------------------------------------------------------------------
# Bad inputs: each raises CheckpointError naming the file


def _header_file(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def _bad_files(tmp_path: Path, sd15_file: Path, tiny_sd15: Path, crafted: dict) -> dict[str, tuple[Path, str]]:
    valid = sd15_file.read_bytes()
    header_length = int.from_bytes(valid[:8], "little")
    random_bytes = bytes([0x11]) + random.Random(0).randbytes(4095)  # not a pickle's magic byte
    (tmp_path / "not-a-model").mkdir()
    torch.save({"state_dict": {"x": torch.zeros(2)}}, tmp_path / "old.ckpt")
    lying = {"x": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}
    beyond = {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    files = {
        "missing": (tmp_path / "absent.safetensors", "not found"),
        "empty": (tmp_path / "empty.safetensors", "only 0 bytes"),
        "random bytes": (tmp_path / "random.safetensors", "header claims"),
        "truncated header": (tmp_path / "cut-header.safetensors", "header claims"),
        "truncated data": (tmp_path / "cut-data.safetensors", "truncated"),
        "header not JSON": (tmp_path / "not-json.safetensors", "not JSON"),
        "header lies about sizes": (_header_file(tmp_path / "lies.safetensors", lying, bytes(8)), "lies"),
        "offsets beyond the data": (_header_file(tmp_path / "beyond.safetensors", beyond, bytes(8)), "truncated"),
        "pickle checkpoint": (tmp_path / "old.ckpt", "pickle"),
        "LoRA": (crafted["lora"], "LoRA"),
        "ControlNet": (crafted["webui-controlnet"], "ControlNet"),
        "SD2 single file": (crafted["sd2"], "SD2"),
        "diffusers component": (tiny_sd15 / "unet" / "diffusion_pytorch_model.safetensors", "component"),
        "folder without model_index.json": (tmp_path / "not-a-model", "model_index.json"),
    }
    files["empty"][0].write_bytes(b"")
    files["random bytes"][0].write_bytes(random_bytes)
    files["truncated header"][0].write_bytes(valid[: 8 + header_length // 2])
    files["truncated data"][0].write_bytes(valid[:-100])
    files["header not JSON"][0].write_bytes((10).to_bytes(8, "little") + b"not json!!")
    return files


BAD_CASES = ["missing", "empty", "random bytes", "truncated header", "truncated data", "header not JSON",
             "header lies about sizes", "offsets beyond the data", "pickle checkpoint", "LoRA", "ControlNet",
             "SD2 single file", "diffusers component", "folder without model_index.json"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_checkpoint_raises_an_error_naming_the_file(case, tmp_path, sd15_file, tiny_sd15, crafted):
    path, reason = _bad_files(tmp_path, sd15_file, tiny_sd15, crafted)[case]
    with pytest.raises(CheckpointError, match=reason) as error:
        load_components(path, cache_dir=tmp_path / "cache")
    assert str(path) in str(error.value)


def test_corrupt_weights_inside_a_diffusers_folder_are_named(tiny_sd15, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd15, folder, ignore=shutil.ignore_patterns("controlnet-*"))
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="truncated") as error:
        load_components(folder)
    assert str(weights) in str(error.value)


def _rewritten(sd15_file: Path, path: Path, change) -> Path:
    state = load_file(sd15_file)
    change(state)
    save_file(state, str(path), metadata=read_safetensors_header(sd15_file).metadata)
    return path


def test_a_leftover_key_is_named(sd15_file, tmp_path):
    extra = "model.diffusion_model.input_blocks.1.0.extra_layer.weight"
    path = _rewritten(sd15_file, tmp_path / "extra.safetensors", lambda state: state.update({extra: torch.ones(2)}))
    with pytest.raises(CheckpointError, match="left over") as error:
        load_components(path, cache_dir=tmp_path)
    assert extra in str(error.value) and str(path) in str(error.value)


def test_a_missing_key_is_named(sd15_file, tmp_path):
    gone = "first_stage_model.decoder.conv_out.bias"
    path = _rewritten(sd15_file, tmp_path / "missing.safetensors", lambda state: state.pop(gone))
    with pytest.raises(CheckpointError, match="missing") as error:
        load_components(path, cache_dir=tmp_path)
    assert gone in str(error.value) and str(path) in str(error.value)


def test_an_invalid_config_note_is_named(sd15_file, tmp_path):
    path = tmp_path / "bad-note.safetensors"
    note = json.dumps({"unet": {"norm_num_groups": -3}})
    save_file(load_file(sd15_file), str(path), metadata={CONFIG_HINTS_KEY: note})
    with pytest.raises(CheckpointError, match="norm_num_groups") as error:
        load_components(path, cache_dir=tmp_path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# Export never leaves a partial file


def test_a_failing_writer_leaves_no_partial_file(sd15_reference, tmp_path, monkeypatch):
    def write_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", write_half_then_fail)
    target = tmp_path / "out" / "model.safetensors"
    with pytest.raises(CheckpointError, match="No space left") as error:
        export_single_file(sd15_reference, target)
    assert str(target) in str(error.value)
    assert list(target.parent.iterdir()) == []


def test_export_into_a_read_only_folder_leaves_nothing(sd15_reference, tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions: make the folder refuse files as it would
            real_open = os.open

            def refuse_in_folder(path, *args, **kwargs):
                if Path(path).parent == folder:
                    raise PermissionError(13, "Permission denied", str(path))
                return real_open(path, *args, **kwargs)

            monkeypatch.setattr(os, "open", refuse_in_folder)
        target = folder / "model.safetensors"
        with pytest.raises(CheckpointError, match="Permission denied") as error:
            export_single_file(sd15_reference, target)
        assert str(target) in str(error.value)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(stat.S_IRWXU)


def test_export_refuses_to_overwrite_unless_asked(sd15_reference, tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(CheckpointError, match="already exists"):
        export_single_file(sd15_reference, target)
    assert target.read_bytes() == b"keep me"

    export_single_file(sd15_reference, target, overwrite=True, dtype=torch.float16)
    assert inspect_checkpoint(target).family == "sd15"
    assert set(read_safetensors_header(target).dtypes.values()) == {"F16", "I64"}  # position_ids stay integers
    assert [path.name for path in tmp_path.iterdir()] == ["model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # readable like any file the user writes


# ---------------------------------------------------------------------------------------------
# Offline, and the WebUI's model hash


def test_loading_never_touches_the_network(tiny_sd15, sd15_file, tmp_path, monkeypatch):
    def no_network(*_args, **_kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)

    assert load_components(sd15_file, cache_dir=tmp_path).family == "sd15"  # builds the tokenizer cache too
    assert load_components(tiny_sd15).family == "sd15"


def test_short_hash_is_the_webuis_and_is_cached(tmp_path, monkeypatch):
    model = tmp_path / "model.safetensors"
    content = random.Random(1).randbytes(0x120000)
    model.write_bytes(content)
    cache = tmp_path / "hashes.json"

    assert short_hash(model, cache_file=cache) == hashlib.sha256(content).hexdigest()[:10]
    assert checkpoints.legacy_model_hash(model) == hashlib.sha256(content[0x100000:0x110000]).hexdigest()[:8]

    real_sha256 = hashlib.sha256
    monkeypatch.setattr(checkpoints.hashlib, "sha256", lambda *_: pytest.fail("hashed again"))
    assert short_hash(model, cache_file=cache) == real_sha256(content).hexdigest()[:10]
    monkeypatch.setattr(checkpoints.hashlib, "sha256", real_sha256)

    model.write_bytes(content + b"changed")
    assert short_hash(model, cache_file=cache) == real_sha256(content + b"changed").hexdigest()[:10]
    with pytest.raises(CheckpointError, match="not a file"):
        short_hash(tmp_path, cache_file=cache)


# ---------------------------------------------------------------------------------------------
# Slow tier: a full-size SD1.5 in the WebUI layout


def _zero_filled(model):
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.zero_()
    return model


@pytest.mark.slow
def test_full_size_sd15_single_file_loads_with_the_real_dimensions(tmp_path):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():  # diffusers' defaults are SD1.5's UNet, apart from these two
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to(torch.float16)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4).to(torch.float16)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)).to(torch.float16)
    zeros = SDComponents(family="sd15", unet=_zero_filled(unet), vae=_zero_filled(vae),
                         text_encoder=_zero_filled(text_encoder), tokenizer=None, scheduler=None,
                         source=Path("zero-filled SD1.5"))
    path = export_single_file(zeros, tmp_path / "sd15-zeros.safetensors")
    del zeros, unet, vae, text_encoder

    header = read_safetensors_header(path)
    assert CONFIG_HINTS_KEY not in header.metadata  # real dimensions need no notes: all comes from shapes
    for key, shape in {"model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
                       "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
                       "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
                       "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
                       "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
                       "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
                       }.items():
        assert header.shapes[key] == shape, key

    loaded = load_components(path, dtype=torch.float16, cache_dir=tmp_path)

    unet_config, vae_config, text_config = loaded.unet.config, loaded.vae.config, loaded.text_encoder.config
    assert inspect_checkpoint(path).family == loaded.family == "sd15"
    assert list(unet_config.block_out_channels) == [320, 640, 1280, 1280]
    assert (unet_config.cross_attention_dim, unet_config.attention_head_dim, unet_config.layers_per_block) == (
        768, 8, 2)
    assert (unet_config.in_channels, unet_config.norm_num_groups, unet_config.use_linear_projection) == (4, 32, False)
    assert list(unet_config.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert sum(parameter.numel() for parameter in loaded.unet.parameters()) == 859_520_964
    assert list(vae_config.block_out_channels) == [128, 256, 512, 512]
    assert (vae_config.latent_channels, vae_config.scaling_factor) == (4, 0.18215)
    assert (text_config.hidden_size, text_config.num_hidden_layers, text_config.num_attention_heads) == (768, 12, 12)
    assert text_config.hidden_act == "quick_gelu"
    assert loaded.unet.conv_in.weight.dtype == torch.float16
    assert not loaded.unet.conv_in.weight.any()
    assert torch.equal(loaded.text_encoder.text_model.embeddings.position_ids[0], torch.arange(77))


def test_header_length_ending_in_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """The first byte of a safetensors file is the low byte of its header length: 0x80 is as likely as any."""
    import torch
    from safetensors.torch import save

    from portrait_core.models.checkpoints import read_safetensors_header

    tensors = {"lora_unet_x.lora_down.weight": torch.zeros(2, 3)}
    for padding in range(256):
        data = save(tensors, metadata={"pad": "x" * padding})
        if data[0] == 0x80:
            break
    path = tmp_path / "lucky.safetensors"
    path.write_bytes(data)
    assert read_safetensors_header(path).shapes == {"lora_unet_x.lora_down.weight": (2, 3)}
