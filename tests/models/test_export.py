"""Writing single-file checkpoints: the WebUI's key names, never a partial file, refusing to overwrite."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import safetensors.torch
import torch

from portrait_core.errors import CheckpointError
from portrait_core.models.checkpoints.family import inspect_checkpoint
from portrait_core.models.checkpoints.header import read_safetensors_header
from portrait_core.models.checkpoints.loading import SDComponents, load_components
from portrait_core.models.export import export_single_file


@pytest.fixture(scope="module")
def sd15_reference(tiny_sd15) -> SDComponents:
    return load_components(tiny_sd15)


def test_sd15_export_uses_the_webui_key_names(tiny_sd15_file):
    header = read_safetensors_header(tiny_sd15_file)
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


