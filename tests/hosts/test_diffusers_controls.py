"""DiffusersHost's control networks: the colour T2I-Adapter against diffusers' own adapter pipeline and a
plain reference, windows that stop a ControlNet (counted), and no VAE encode of the masked image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_core.core import imaging
from portrait_core.hosts.base import Control
from portrait_core.hosts.diffusers_controls import window_keeps
from portrait_core.hosts.diffusers_host import DiffusersHost

STEPS, DENOISE, SEED, SIZE, PROMPT = 8, 0.75, 5, (64, 64), "a studio portrait"


@pytest.fixture(scope="module")
def portrait(astronaut):
    return astronaut.resize(SIZE, Image.LANCZOS)


@pytest.fixture(scope="module")
def face_mask():
    mask = Image.new("L", SIZE, 0)
    mask.paste(255, (16, 8, 48, 44))
    return mask


@pytest.fixture(scope="module")
def host(tiny_sd15, tmp_path_factory):
    return DiffusersHost(tiny_sd15, lora_dir=tmp_path_factory.mktemp("Lora"))


@pytest.fixture(scope="module")
def reference_parts(tiny_sd15):
    """The tiny model loaded by diffusers itself, apart from the host's copy."""
    from diffusers import ControlNetModel, EulerAncestralDiscreteScheduler, StableDiffusionPipeline, T2IAdapter

    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd15), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    keep = ("vae", "text_encoder", "tokenizer", "unet", "safety_checker", "feature_extractor")
    return {"components": {name: base.components[name] for name in keep},
            "scheduler": EulerAncestralDiscreteScheduler.from_config(base.scheduler.config),
            "adapter": T2IAdapter.from_pretrained(str(tiny_sd15 / "t2iadapter-color"), local_files_only=True),
            "canny": ControlNetModel.from_pretrained(str(tiny_sd15 / "controlnet-canny"), local_files_only=True)}


def _pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _count_forwards(module) -> list[int]:
    calls = [0]

    def count(*_):
        calls[0] += 1

    module.register_forward_pre_hook(count)
    return calls


def _inpaint(host, portrait, face_mask, controls, **kwargs):
    return host.inpaint(portrait, face_mask, PROMPT, controls=controls, steps=STEPS, denoise=DENOISE, seed=SEED,
                        size=SIZE, **kwargs)


def test_colour_adapter_txt2img_matches_diffusers_adapter_pipeline(host, reference_parts, portrait):
    from diffusers import StableDiffusionAdapterPipeline

    ours = host.txt2img(PROMPT, controls=[Control("color", portrait, 0.85)], steps=STEPS, seed=SEED, size=SIZE)
    parts = reference_parts
    pipeline = StableDiffusionAdapterPipeline(**{**parts["components"], "scheduler": parts["scheduler"]},
                                              adapter=parts["adapter"], requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(PROMPT, image=imaging.color_grid_map(portrait).resize(SIZE, Image.LANCZOS),
                      num_inference_steps=STEPS, guidance_scale=7.0, height=SIZE[1], width=SIZE[0],
                      adapter_conditioning_scale=0.85,
                      generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    # Within float rounding: the host's plain txt2img and diffusers' plain pipeline differ by up to 2 levels too.
    difference = np.abs(_pixels(ours) - _pixels(theirs))
    assert difference.max() <= 2 and difference.mean() < 0.3
    plain = host.txt2img(PROMPT, steps=STEPS, seed=SEED, size=SIZE)
    assert np.abs(_pixels(ours) - _pixels(plain)).mean() > 1.0  # the colours steer the image


def test_adapter_inpaint_beside_a_controlnet_matches_a_reference_loop(host, reference_parts, portrait, face_mask):
    """Canny ControlNet + colour adapter in one inpaint call, against diffusers' ControlNet inpaint pipeline
    given the adapter's features through the UNet's own `down_intrablock_additional_residuals`."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    controls = [Control("canny", portrait, 0.5), Control("color", portrait, 0.85)]
    ours = _inpaint(host, portrait, face_mask, controls)
    parts = reference_parts
    pipeline = StableDiffusionControlNetInpaintPipeline(
        **{**parts["components"], "scheduler": parts["scheduler"]}, controlnet=parts["canny"],
        requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    colours = np.asarray(imaging.color_grid_map(portrait).resize(SIZE, Image.LANCZOS), dtype=np.float32) / 255
    with torch.no_grad():
        features = [f * 0.85 for f in parts["adapter"](torch.from_numpy(colours.transpose(2, 0, 1)[None]))]

    def add_features(module, args, kwargs):
        kwargs["down_intrablock_additional_residuals"] = [torch.cat([f, f]) for f in features]
        return args, kwargs

    handle = pipeline.unet.register_forward_pre_hook(add_features, with_kwargs=True)
    try:
        generated = pipeline(PROMPT, image=portrait, mask_image=face_mask, strength=DENOISE,
                             control_image=imaging.canny_map(portrait).resize(SIZE, Image.LANCZOS),
                             controlnet_conditioning_scale=0.5, num_inference_steps=STEPS, guidance_scale=7.0,
                             height=SIZE[1], width=SIZE[0],
                             generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    finally:
        handle.remove()
    theirs = imaging.feathered_composite(portrait, generated, face_mask, 4)
    assert np.abs(_pixels(ours) - _pixels(theirs)).max() <= 1


def test_the_colour_adapter_runs_once_per_call_and_no_colour_controlnet_runs(tiny_sd15, portrait, face_mask):
    host = DiffusersHost(tiny_sd15)
    _inpaint(host, portrait, face_mask, [Control("canny", portrait, 0.5), Control("color", portrait, 0.85)])
    adapter_calls = _count_forwards(host._adapter("color"))
    canny_calls = _count_forwards(host._controlnet("canny"))
    before = dict(host.forwards)
    _inpaint(host, portrait, face_mask, [Control("canny", portrait, 0.5), Control("color", portrait, 0.85)])
    steps = int(STEPS * DENOISE)
    assert adapter_calls[0] == 1 and canny_calls[0] == steps
    assert host.forwards["adapter"] - before["adapter"] == 1
    assert host.forwards["controlnet"] - before["controlnet"] == steps
    assert "color" not in host._controlnets  # never loaded


def test_color_adapter_false_runs_the_colour_controlnet(tiny_sd15, portrait, face_mask):
    host = DiffusersHost(tiny_sd15, color_adapter=False)
    _inpaint(host, portrait, face_mask, [Control("color", portrait, 0.85)])
    assert "color" in host._controlnets and not host._adapters
    assert host.forwards == {"controlnet": int(STEPS * DENOISE), "adapter": 0}


def test_a_controlnet_stops_running_after_its_window(tiny_sd15, portrait, face_mask):
    host = DiffusersHost(tiny_sd15, color_adapter=False)
    controls = [Control("canny", portrait, 0.5, end=0.5), Control("color", portrait, 0.85, start=0.25)]
    _inpaint(host, portrait, face_mask, controls)  # loads the networks
    canny_calls, color_calls = _count_forwards(host._controlnet("canny")), _count_forwards(host._controlnet("color"))
    _inpaint(host, portrait, face_mask, controls)
    steps = int(STEPS * DENOISE)
    assert canny_calls[0] == sum(window_keeps(0.0, 0.5, steps)) == steps // 2
    assert color_calls[0] == sum(window_keeps(0.25, 1.0, steps)) < steps


def _record_residuals(net) -> list[torch.Tensor]:
    """The first (full-size) down-block residual a ControlNet hands the UNet, at every forward."""
    seen = []
    net.register_forward_hook(lambda _module, _args, output: seen.append(output[0][0].detach().clone()))
    return seen


def test_each_controlnet_embeds_its_control_image_once_per_call_and_its_residuals_stay_the_same(
        tiny_sd15, portrait, face_mask):
    cached, uncached = DiffusersHost(tiny_sd15), DiffusersHost(tiny_sd15)
    uncached.cache_control_embeddings = False
    flipped = portrait.transpose(Image.FLIP_LEFT_RIGHT)
    calls = [[Control("canny", image, 0.5), Control("openpose", image, 0.5, preprocessed=True)]
             for image in (portrait, flipped)]
    for host in (cached, uncached):
        _inpaint(host, portrait, face_mask, calls[0])  # loads the networks
    embeds = {kind: _count_forwards(cached._controlnet(kind).controlnet_cond_embedding.conv_in)
              for kind in ("canny", "openpose")}
    forwards = _count_forwards(cached._controlnet("canny"))
    ours, theirs = _record_residuals(cached._controlnet("canny")), _record_residuals(uncached._controlnet("canny"))
    images = [(_inpaint(cached, portrait, face_mask, controls), _inpaint(uncached, portrait, face_mask, controls))
              for controls in calls]
    steps = int(STEPS * DENOISE)
    assert forwards[0] == 2 * steps and embeds["canny"][0] == embeds["openpose"][0] == 2
    assert len(ours) == len(theirs) == 2 * steps
    assert all(torch.equal(mine, reference) for mine, reference in zip(ours, theirs, strict=True))
    assert not torch.equal(ours[0], ours[steps]), "the second call's new control image was not embedded again"
    for mine, reference in images:
        assert np.array_equal(_pixels(mine), _pixels(reference))


@pytest.mark.parametrize("canny_end", [1.0, 0.5])
def test_skipped_forwards_and_the_skipped_encode_leave_the_image_as_diffusers_makes_it(
        tiny_sd15, reference_parts, portrait, face_mask, canny_end):
    """Against diffusers' pipeline, which runs every ControlNet at every step (scale 0 outside its window)
    and VAE-encodes the masked image."""
    from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline
    from diffusers.pipelines.controlnet import MultiControlNetModel

    host = DiffusersHost(tiny_sd15, color_adapter=False)
    ours = _inpaint(host, portrait, face_mask, [Control("canny", portrait, 0.5, end=canny_end),
                                                Control("color", portrait, 0.85)])
    parts = reference_parts
    colour_net = ControlNetModel.from_pretrained(str(tiny_sd15 / "controlnet-color"), local_files_only=True)
    pipeline = StableDiffusionControlNetInpaintPipeline(
        **{**parts["components"], "scheduler": parts["scheduler"]},
        controlnet=MultiControlNetModel([parts["canny"], colour_net]), requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    maps = [imaging.canny_map(portrait).resize(SIZE, Image.LANCZOS),
            imaging.color_grid_map(portrait).resize(SIZE, Image.LANCZOS)]
    generated = pipeline(PROMPT, image=portrait, mask_image=face_mask, strength=DENOISE, control_image=maps,
                         controlnet_conditioning_scale=[0.5, 0.85], control_guidance_start=[0.0, 0.0],
                         control_guidance_end=[canny_end, 1.0], num_inference_steps=STEPS, guidance_scale=7.0,
                         height=SIZE[1], width=SIZE[0], generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    theirs = imaging.feathered_composite(portrait, generated, face_mask, 4)
    assert np.abs(_pixels(ours) - _pixels(theirs)).max() <= 1


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_inpaint_encodes_only_the_image_not_the_masked_image(request, family, portrait, face_mask):
    host = DiffusersHost(request.getfixturevalue(f"tiny_{family}"))
    _inpaint(host, portrait, face_mask, [Control("canny", portrait, 0.5)])
    encodes = _count_forwards(host._load_components().vae.encoder)
    _inpaint(host, portrait, face_mask, [Control("canny", portrait, 0.5)])
    _inpaint(host, portrait, face_mask, [])
    assert encodes[0] == 2  # one per call: the image to start from
