"""DiffusersHost on the tiny SD1.5/SDXL models: sizes, masks, seeds, controls, LoRA, interruption, caching."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from portrait_core.errors import ControlError, GenerationInterrupted, InputImageError, LoraFileError
from portrait_core.hosts.base import Control, Host
from portrait_core.hosts.diffusers_host import SAMPLER_SCHEDULERS, DiffusersHost
from tests.lora_factory import random_lora_for

STEPS = 6


@pytest.fixture(scope="module")
def host(tiny_sd15, tmp_path_factory):
    return DiffusersHost(tiny_sd15, lora_dir=tmp_path_factory.mktemp("Lora"))


@pytest.fixture(scope="module")
def portrait(astronaut):
    return astronaut.resize((128, 128), Image.LANCZOS)


@pytest.fixture(scope="module")
def face_mask():
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (40, 24, 88, 80))
    return mask


def _array(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _inpaint(host, image, mask, **kwargs):
    options = {"steps": STEPS, "denoise": 0.6, "seed": 7} | kwargs
    return host.inpaint(image, mask, "a studio portrait", **options)


def test_diffusers_host_satisfies_the_host_protocol(host):
    assert isinstance(host, Host)


@pytest.mark.parametrize("kinds", [(), ("canny",), ("canny", "color", "tile")])
def test_inpaint_with_0_1_3_controls_returns_requested_size(host, portrait, face_mask, kinds):
    controls = [Control(kind, portrait, weight=0.6) for kind in kinds]
    result = _inpaint(host, portrait, face_mask, controls=controls, size=(96, 64))
    assert result.size == (96, 64)


def test_controls_steer_the_result(host, portrait, face_mask):
    plain = _array(_inpaint(host, portrait, face_mask))
    guided = _array(_inpaint(host, portrait, face_mask, controls=[Control("canny", portrait, weight=1.0)]))
    assert np.abs(plain - guided).mean() > 1.0


def test_pixels_away_from_the_mask_are_unchanged(host, portrait, face_mask):
    result = _array(_inpaint(host, portrait, face_mask, mask_blur=4))
    original = _array(portrait)
    outside = np.ones((128, 128), bool)
    outside[24 - 8 : 80 + 8, 40 - 8 : 88 + 8] = False  # the mask plus its feather
    assert np.array_equal(result[outside], original[outside])
    inside = (slice(32, 72), slice(48, 80))
    assert np.abs(result[inside] - original[inside]).mean() > 5, "the masked face was not repainted"


def test_same_seed_same_image_other_seed_differs(host, portrait, face_mask):
    first = _array(_inpaint(host, portrait, face_mask, seed=11))
    again = _array(_inpaint(host, portrait, face_mask, seed=11))
    other = _array(_inpaint(host, portrait, face_mask, seed=12))
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0


def test_kohya_lora_changes_output_and_weight_zero_does_not(host, portrait, face_mask):
    components = host._load_components()
    lora_path = random_lora_for({"unet": components.unet, "text_encoder": components.text_encoder},
                                host.lora_dir() / "me.safetensors")
    base = _array(_inpaint(host, portrait, face_mask))
    with_lora = _array(_inpaint(host, portrait, face_mask, lora=[("me", 1.0)]))
    at_zero = _array(_inpaint(host, portrait, face_mask, lora=[("me", 0.0)]))
    by_path = _array(_inpaint(host, portrait, face_mask, lora=[(lora_path, 1.0)]))
    after = _array(_inpaint(host, portrait, face_mask))
    assert np.abs(base - with_lora).mean() > 1.0
    assert np.array_equal(base, at_zero)
    assert np.array_equal(with_lora, by_path)
    assert np.array_equal(base, after), "base weights were not restored exactly after the LoRA"


def test_several_loras_with_weights(host, portrait, face_mask):
    components = host._load_components()
    parts = {"unet": components.unet, "text_encoder": components.text_encoder}
    random_lora_for(parts, host.lora_dir() / "a.safetensors", seed=1)
    random_lora_for(parts, host.lora_dir() / "b.safetensors", seed=2)
    only_a = _array(_inpaint(host, portrait, face_mask, lora=[("a", 0.7)]))
    both = _array(_inpaint(host, portrait, face_mask, lora=[("a", 0.7), ("b", 0.5)]))
    assert np.abs(only_a - both).mean() > 1.0


def test_progress_reported_each_step_and_interrupt_stops_early(tiny_sd15, portrait, face_mask):
    seen = []

    def on_progress(step, total, text):
        seen.append((step, total))
        if step == 2:
            host.interrupt()

    host = DiffusersHost(tiny_sd15, progress_callback=on_progress)
    with pytest.raises(GenerationInterrupted) as stopped:
        host.txt2img("a portrait", steps=10, seed=1, size=(64, 64))
    assert stopped.value.steps_done == 2 and stopped.value.total == 10
    assert seen == [(1, 10), (2, 10)]
    seen.clear()
    host._progress_callback = lambda step, total, text: seen.append((step, total))
    host.txt2img("a portrait", steps=4, seed=1, size=(64, 64))  # a new call is not still interrupted
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_second_call_reloads_nothing(tiny_sd15, portrait, face_mask):
    host = DiffusersHost(tiny_sd15)
    controls = [Control("canny", portrait), Control("tile", portrait)]
    _inpaint(host, portrait, face_mask, controls=controls)
    loads_after_first = host.load_count
    assert loads_after_first == 3  # the base model and two ControlNets
    _inpaint(host, portrait, face_mask, controls=controls, seed=99)
    host.txt2img("another", steps=2, size=(64, 64))
    assert host.load_count == loads_after_first


@pytest.mark.parametrize("sampler", sorted(SAMPLER_SCHEDULERS))
def test_every_sampler_runs(host, sampler):
    image = host.txt2img("a portrait", steps=3, seed=5, sampler=sampler, size=(64, 64))
    assert image.size == (64, 64)


def test_sampler_choice_changes_the_image(host):
    euler_a = _array(host.txt2img("a portrait", steps=4, seed=5, sampler="Euler a", size=(64, 64)))
    ddim = _array(host.txt2img("a portrait", steps=4, seed=5, sampler="DDIM", size=(64, 64)))
    assert np.abs(euler_a - ddim).mean() > 0.5


def test_openpose_needs_a_ready_pose_image(host, portrait):
    pose = Image.new("RGB", (64, 64), "black")
    assert host.txt2img("x", steps=2, size=(64, 64), controls=[Control("openpose", pose, preprocessed=True)])
    with pytest.raises(ControlError, match="ready-made pose"):
        host.txt2img("x", steps=2, size=(64, 64), controls=[Control("openpose", portrait)])


def test_bad_inputs_raise_errors_that_name_the_problem(host, portrait, face_mask, tmp_path):
    with pytest.raises(InputImageError, match="mask is 64x64"):
        _inpaint(host, portrait, face_mask.resize((64, 64)))
    with pytest.raises(ControlError, match="unknown control kind 'depthmap'"):
        Control("depthmap", portrait)
    with pytest.raises(ControlError, match="ip_adapter"):
        _inpaint(host, portrait, face_mask, controls=[Control("ip_adapter", portrait)])
    with pytest.raises(InputImageError, match="multiple of 8"):
        host.txt2img("x", size=(100, 64))
    with pytest.raises(InputImageError, match="unknown sampler"):
        host.txt2img("x", size=(64, 64), sampler="Turbo 9000")


def test_lora_errors_name_the_file(host, portrait, face_mask, tiny_sd15):
    with pytest.raises(LoraFileError, match="not found"):
        _inpaint(host, portrait, face_mask, lora=[("nobody", 1.0)])
    with pytest.raises(LoraFileError, match="must be a file name"):
        _inpaint(host, portrait, face_mask, lora=[("../../etc/passwd", 1.0)])
    not_a_lora = tiny_sd15 / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(LoraFileError, match="diffusion_pytorch_model.safetensors"):
        _inpaint(host, portrait, face_mask, lora=[(not_a_lora, 1.0)])


def test_missing_controlnet_is_named(tmp_path, tiny_sd15, portrait, face_mask):
    host = DiffusersHost(tiny_sd15, controlnets={"canny": tmp_path / "nowhere"})
    with pytest.raises(ControlError, match="canny"):
        _inpaint(host, portrait, face_mask, controls=[Control("canny", portrait)])
    assert "canny" in host.controlnet_models() and "tile" in host.controlnet_models()


def test_upscale_doubles_the_size(host, portrait):
    assert host.upscale(portrait, 2.0).size == (256, 256)


def test_sdxl_txt2img_and_controlled_inpaint(tiny_sdxl, portrait, face_mask):
    host = DiffusersHost(tiny_sdxl)
    assert host.family == "sdxl"
    assert host.txt2img("a portrait", steps=3, seed=1, size=(64, 64)).size == (64, 64)
    result = host.inpaint(portrait, face_mask, "a portrait", steps=4, denoise=0.5, seed=1,
                          controls=[Control("canny", portrait, weight=0.5)])
    assert result.size == (128, 128)


def test_concurrent_callers_each_get_the_image_they_would_get_alone(tiny_sd15, tmp_path, portrait, face_mask):
    """Four threads on one fresh host (loads, LoRA merges, scheduler swaps all racing) get exactly their
    own images: the host's session lock serialises them."""
    import threading

    lora_folder = tmp_path / "Lora"
    alone = DiffusersHost(tiny_sd15, lora_dir=lora_folder)
    components = alone._load_components()
    random_lora_for({"unet": components.unet, "text_encoder": components.text_encoder},
                    lora_folder / "someone.safetensors", seed=3)
    requests = [{"seed": 1}, {"seed": 2, "sampler": "DDIM"}, {"seed": 3, "lora": [("someone", 0.9)]},
                {"seed": 4, "controls": [Control("canny", portrait, weight=0.8)], "sampler": "Euler"}]
    expected = [_array(_inpaint(alone, portrait, face_mask, **request)) for request in requests]
    shared = DiffusersHost(tiny_sd15, lora_dir=lora_folder)  # fresh: the first callers race for the load too
    results, errors = [None] * len(requests), []

    def call(index):
        try:
            results[index] = _array(_inpaint(shared, portrait, face_mask, **requests[index]))
        except Exception as error:  # collected and reported by the assertion below
            errors.append(repr(error))

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    for index, (got, want) in enumerate(zip(results, expected, strict=True)):
        assert np.array_equal(got, want), f"request {index} differs from the same request alone"
    assert shared.load_count == alone.load_count


def test_a_session_interrupt_stops_only_its_own_turn(host, portrait, face_mask):
    with host.session("first") as first:
        assert first.interrupt()  # aimed at the running session: it stops its remaining calls
        with pytest.raises(GenerationInterrupted):
            _inpaint(host, portrait, face_mask)
    assert not first.interrupt()  # over: a late cancel must not reach the next caller
    assert _inpaint(host, portrait, face_mask).size == portrait.size


def test_the_sampler_list_is_the_hosts_own(host):
    assert host.samplers() == list(SAMPLER_SCHEDULERS)
