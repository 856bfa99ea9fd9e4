"""Tiny local Stable Diffusion models: built offline, deterministic, cached, SD-shaped."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from portrait_core.models import tiny as tiny_sd


def _weights(folder):
    return {path.relative_to(folder).as_posix(): load_file(path) for path in sorted(folder.rglob("*.safetensors"))}


def test_sd15_folder_has_every_component_and_control(tiny_sd15):
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_sd15 / part).is_dir(), part
    for kind in tiny_sd.CONTROL_KINDS:
        assert (tiny_sd15 / f"controlnet-{kind}" / "config.json").is_file(), kind
    index = json.loads((tiny_sd15 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_vae_downscales_eight_times(tiny_sd15):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sd15 / "vae", local_files_only=True)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 128, 96)).latent_dist.mean
    assert tuple(latents.shape) == (1, 4, 16, 12)


def test_sdxl_has_two_text_encoders_and_text_time_conditioning(tiny_sdxl):
    assert (tiny_sdxl / "text_encoder_2" / "config.json").is_file()
    unet_config = json.loads((tiny_sdxl / "unet" / "config.json").read_text())
    assert unet_config["addition_embed_type"] == "text_time"
    te_width = json.loads((tiny_sdxl / "text_encoder" / "config.json").read_text())["hidden_size"]
    te2_width = json.loads((tiny_sdxl / "text_encoder_2" / "config.json").read_text())["hidden_size"]
    assert unet_config["cross_attention_dim"] == te_width + te2_width


def test_cached_build_is_reused_not_rebuilt(tiny_sd15, tiny_cache_dir):
    before = {p: p.stat().st_mtime_ns for p in tiny_sd15.rglob("*.safetensors")}
    assert tiny_sd.ensure_tiny_sd15(seed=0, cache_dir=tiny_cache_dir) == tiny_sd15
    assert {p: p.stat().st_mtime_ns for p in tiny_sd15.rglob("*.safetensors")} == before


def test_same_seed_rebuilds_bit_identically_and_other_seed_differs(tiny_sd15, tmp_path):
    again = tiny_sd.ensure_tiny_sd15(seed=0, cache_dir=tmp_path)
    first, second = _weights(tiny_sd15), _weights(again)
    assert first.keys() == second.keys()
    for name, tensors in first.items():
        for key, tensor in tensors.items():
            assert torch.equal(tensor, second[name][key]), f"{name}:{key}"
    other = _weights(tiny_sd.ensure_tiny_sd15(seed=1, cache_dir=tmp_path))
    unet_key = next(iter(first["unet/diffusion_pytorch_model.safetensors"]))
    assert not torch.equal(first["unet/diffusion_pytorch_model.safetensors"][unet_key],
                           other["unet/diffusion_pytorch_model.safetensors"][unet_key])


def test_interrupted_build_is_redone(tiny_cache_dir, tmp_path):
    target = tiny_sd.tiny_model_dir("sd15", 0, tmp_path)
    target.mkdir(parents=True)
    (target / "half-written").write_text("")  # a build that died before its marker
    built = tiny_sd.ensure_tiny_sd15(seed=0, cache_dir=tmp_path)
    assert not (built / "half-written").exists()
    assert (built / tiny_sd.MARKER_FILE).is_file()


def test_build_needs_no_network(monkeypatch, tmp_path):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the tiny model build tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert (tiny_sd.ensure_tiny_sdxl(seed=2, cache_dir=tmp_path) / "unet").is_dir()


@pytest.mark.parametrize("kind", ["canny", "openpose"])
def test_sdxl_controlnets_exist(tiny_sdxl, kind):
    assert (tiny_sdxl / f"controlnet-{kind}" / "config.json").is_file()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_controlnet_answers_its_control_image(request, family):
    """An untrained ControlNet's last conditioning convolution is zero: the tiny ones must not be, or no test
    of a control could tell one control image from another."""
    from diffusers import ControlNetModel

    folder = request.getfixturevalue(f"tiny_{family}")
    for path in sorted(folder.glob("controlnet-*")):
        net = ControlNetModel.from_pretrained(str(path), local_files_only=True).eval()
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, 8, 8, generator=generator)
        context = torch.randn(1, 77, net.config.cross_attention_dim, generator=generator)
        extra = {}
        if net.config.addition_embed_type == "text_time":
            extra["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, net.config.projection_class_embeddings_input_dim
                                                                     - 6 * net.config.addition_time_embed_dim),
                                          "time_ids": torch.zeros(1, 6)}
        with torch.no_grad():
            residuals = [net(latents, 10, encoder_hidden_states=context, controlnet_cond=image, return_dict=False,
                             **extra)[0][0] for image in (torch.zeros(1, 3, 64, 64), torch.ones(1, 3, 64, 64))]
        assert not torch.equal(*residuals), f"{path.name} ignores its control image"
