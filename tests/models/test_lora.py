"""Kohya LoRA files: reading, validation, and exact merge/restore of base weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from portrait_core.errors import LoraFileError
from portrait_core.models.lora import LoraLayer, LoraPatcher, read_lora_file, write_lora_file


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, 3)


def _layer(out_features, in_features, rank=2, alpha=1.0, seed=1, kernel=()):
    generator = torch.Generator().manual_seed(seed)
    return LoraLayer(down=torch.randn(rank, in_features, *kernel, generator=generator),
                     up=torch.randn(out_features, rank, *((1, 1) if kernel else ()), generator=generator), alpha=alpha)


def test_merge_adds_alpha_over_rank_times_up_down_and_restore_is_exact(tmp_path):
    model = TwoLayers()
    original = model.proj.weight.detach().clone()
    layer = _layer(5, 6, rank=2, alpha=1.0)
    path = write_lora_file(tmp_path / "a.safetensors", {"lora_unet_proj": layer})
    patcher = LoraPatcher({"unet": model})
    patcher.apply([(path, 0.8)])
    expected = original + 0.8 * (1.0 / 2) * (layer.up @ layer.down)
    assert torch.allclose(model.proj.weight, expected, atol=1e-6)
    patcher.apply([])
    assert torch.equal(model.proj.weight, original)


def test_conv_lora_with_3x3_down_and_1x1_up(tmp_path):
    model = TwoLayers()
    original = model.conv.weight.detach().clone()
    layer = _layer(4, 3, rank=2, alpha=2.0, kernel=(3, 3))
    path = write_lora_file(tmp_path / "c.safetensors", {"lora_unet_conv": layer})
    LoraPatcher({"unet": model}).apply([(path, 1.0)])
    expected = original + torch.einsum("or,rikl->oikl", layer.up[:, :, 0, 0], layer.down)
    assert torch.allclose(model.conv.weight, expected, atol=1e-5)


def test_switching_weights_does_not_accumulate(tmp_path):
    model = TwoLayers()
    path = write_lora_file(tmp_path / "a.safetensors", {"lora_unet_proj": _layer(5, 6)})
    patcher = LoraPatcher({"unet": model})
    patcher.apply([(path, 1.0)])
    once = model.proj.weight.detach().clone()
    patcher.apply([(path, 0.5)])
    patcher.apply([(path, 1.0)])
    assert torch.allclose(model.proj.weight, once, atol=1e-6)


def test_alpha_written_as_given_and_read_back(tmp_path):
    path = write_lora_file(tmp_path / "a.safetensors", {"lora_te_proj": _layer(5, 6, rank=4, alpha=3.0)},
                           {"ss_network_alpha": "3.0"})
    layers = read_lora_file(path)
    assert layers["lora_te_proj"].alpha == 3.0 and layers["lora_te_proj"].rank == 4


def test_file_that_is_not_a_lora_is_rejected_by_name(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.out.0.weight": torch.zeros(3)}, str(path))
    with pytest.raises(LoraFileError, match="model.safetensors"):
        read_lora_file(path)


def test_garbage_bytes_and_pickles_are_rejected(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(LoraFileError, match="junk.safetensors"):
        read_lora_file(junk)
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"whatever")
    with pytest.raises(LoraFileError, match="only .safetensors"):
        read_lora_file(pickle)
    with pytest.raises(LoraFileError, match="not found"):
        read_lora_file(tmp_path / "missing.safetensors")


def test_lora_for_another_model_is_refused_before_any_weight_changes(tmp_path):
    model = TwoLayers()
    original = model.proj.weight.detach().clone()
    layers = {"lora_unet_proj": _layer(5, 6), "lora_unet_input_blocks_1_1_proj_in": _layer(5, 6)}
    path = write_lora_file(tmp_path / "other.safetensors", layers)
    with pytest.raises(LoraFileError, match="does not fit"):
        LoraPatcher({"unet": model}).apply([(path, 1.0)])
    assert torch.equal(model.proj.weight, original)


def test_wrong_shapes_are_refused(tmp_path):
    path = write_lora_file(tmp_path / "shape.safetensors", {"lora_unet_proj": _layer(7, 6)})
    with pytest.raises(LoraFileError, match="do not fit"):
        LoraPatcher({"unet": TwoLayers()}).apply([(path, 1.0)])


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_lora_file(tmp_path / "keep.safetensors", {"lora_unet_proj": _layer(5, 6)})
    before = path.read_bytes()
    import os

    def rename_fails(*args, **kwargs):  # the crash point: new bytes written, not yet swapped in
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", rename_fails)
    with pytest.raises(OSError, match="disk full"):
        write_lora_file(path, {"lora_unet_proj": _layer(5, 6, seed=9)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


def test_text_encoder_prefixes_follow_the_model_family():
    from portrait_core.models.lora import module_index

    sd15 = module_index({"unet": TwoLayers(), "text_encoder": TwoLayers()})
    assert "lora_te_proj" in sd15 and "lora_te1_proj" not in sd15
    sdxl = module_index({"unet": TwoLayers(), "text_encoder": TwoLayers(), "text_encoder_2": TwoLayers()})
    assert {"lora_te1_proj", "lora_te2_proj"} <= sdxl.keys() and "lora_te_proj" not in sdxl
