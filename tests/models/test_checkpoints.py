"""Base models: telling checkpoints apart, single-file round trips, bad files, offline loads, the WebUI's hash."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from portrait_core.errors import CheckpointError
from portrait_core.models.checkpoints import hashes
from portrait_core.models.checkpoints.configs import CONFIG_HINTS_KEY
from portrait_core.models.checkpoints.family import inspect_checkpoint
from portrait_core.models.checkpoints.hashes import short_hash
from portrait_core.models.checkpoints.header import read_safetensors_header
from portrait_core.models.checkpoints.loading import SDComponents, load_components
from portrait_core.models.export import export_single_file

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
def sd15_file(tiny_sd15_file) -> Path:
    return tiny_sd15_file


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
    overlapping = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    numbers_as_metadata = {"__metadata__": {"steps": 5}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    files = {
        "missing": (tmp_path / "absent.safetensors", "not found"),
        "empty": (tmp_path / "empty.safetensors", r"\(0 bytes\).*too short"),
        "random bytes": (tmp_path / "random.safetensors", "claim a header larger than"),
        "truncated header": (tmp_path / "cut-header.safetensors", "header runs past the end.*truncated"),
        "truncated data": (tmp_path / "cut-data.safetensors", "truncated"),
        "header not JSON": (tmp_path / "not-json.safetensors", "header is not the JSON"),
        "header lies about sizes": (_header_file(tmp_path / "lies.safetensors", lying, bytes(8)),
                                    "does not fit the tensor's dtype and shape"),
        "offsets beyond the data": (_header_file(tmp_path / "beyond.safetensors", beyond, bytes(8)), "truncated"),
        "overlapping tensors": (_header_file(tmp_path / "overlap.safetensors", overlapping, bytes(12)),
                                "overlap or leave a gap"),
        "metadata not strings": (_header_file(tmp_path / "meta.safetensors", numbers_as_metadata, bytes(4)),
                                 "metadata that is not strings"),
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
             "header lies about sizes", "offsets beyond the data", "overlapping tensors", "metadata not strings",
             "pickle checkpoint", "LoRA", "ControlNet", "SD2 single file", "diffusers component",
             "folder without model_index.json"]


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
    assert hashes.legacy_model_hash(model) == hashlib.sha256(content[0x100000:0x110000]).hexdigest()[:8]

    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashes.hashlib, "sha256", lambda *_: pytest.fail("hashed again"))
    assert short_hash(model, cache_file=cache) == real_sha256(content).hexdigest()[:10]
    monkeypatch.setattr(hashes.hashlib, "sha256", real_sha256)

    model.write_bytes(content + b"changed")
    assert short_hash(model, cache_file=cache) == real_sha256(content + b"changed").hexdigest()[:10]
    with pytest.raises(CheckpointError, match="not a file"):
        short_hash(tmp_path, cache_file=cache)


def test_the_loader_imports_neither_the_exporter_nor_the_tiny_models(sd15_file, tiny_sd15, tmp_path):
    """The product's load path (WebUI and standalone) must not depend on code written for tests and the demo."""
    script = (
        "import sys\n"
        "from portrait_core.models.checkpoints.loading import load_components\n"
        f"load_components({str(sd15_file)!r}, cache_dir={str(tmp_path)!r})\n"
        f"load_components({str(tiny_sd15)!r})\n"
        "print(sorted(m for m in sys.modules if m in ('portrait_core.models.tiny', 'portrait_core.models.export')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2], check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_header_length_ending_in_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """The first byte of a safetensors file is the low byte of its header length: 0x80 is as likely as any."""
    from safetensors.torch import save

    tensors = {"lora_unet_x.lora_down.weight": torch.zeros(2, 3)}
    for padding in range(256):
        data = save(tensors, metadata={"pad": "x" * padding})
        if data[0] == 0x80:
            break
    path = tmp_path / "lucky.safetensors"
    path.write_bytes(data)
    assert read_safetensors_header(path).shapes == {"lora_unet_x.lora_down.weight": (2, 3)}


def test_the_header_only_guard_catches_a_tensor_read(sd15_file, tmp_path, no_tensor_reads):
    """The guard the inspection tests rely on: reading weights under it fails."""
    assert inspect_checkpoint(sd15_file).family == "sd15"
    with pytest.raises(AssertionError, match="only the header"):
        load_components(sd15_file, cache_dir=tmp_path)
