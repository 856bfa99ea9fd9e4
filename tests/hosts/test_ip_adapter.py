"""Image prompts (IP-Adapter) in DiffusersHost on tiny SD1.5 and SDXL models, with OpenPose and LoRA;
model-family checks for IP-Adapters and ControlNets."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from portrait_core.errors import ControlError
from portrait_core.generate.pose import draw_openpose, extract_pose
from portrait_core.hosts.base import Control
from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.hosts.ip_adapter import inspect_ip_adapter
from portrait_core.models.tiny import ensure_tiny_ip_adapter
from tests.lora_factory import random_lora_for

STEPS = 4
SIZE = (64, 64)


@pytest.fixture(scope="module")
def sd15_adapter(tiny_cache_dir):
    return ensure_tiny_ip_adapter("sd15", cache_dir=tiny_cache_dir)


@pytest.fixture(scope="module")
def sdxl_adapter(tiny_cache_dir):
    return ensure_tiny_ip_adapter("sdxl", cache_dir=tiny_cache_dir)


@pytest.fixture(scope="module")
def reference(astronaut):
    return astronaut.resize((128, 128), Image.LANCZOS)


@pytest.fixture(scope="module")
def other_reference():
    from skimage import data

    return Image.fromarray(data.chelsea()).resize((128, 128), Image.LANCZOS)


@pytest.fixture(scope="module")
def pose_map(astronaut):
    """The astronaut's pose, drawn by our extractor, as the OpenPose control image."""
    return draw_openpose((128, 128), extract_pose(astronaut, name="astronaut"))


@pytest.fixture(scope="module")
def face_mask():
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (40, 24, 88, 80))
    return mask


def _host_with_lora(base, adapter, lora_dir, seed):
    host = DiffusersHost(base, ip_adapter=adapter, lora_dir=lora_dir)
    components = host._load_components()  # the LoRA is made before the adapter changes the UNet
    parts = {"unet": components.unet, "text_encoder": components.text_encoder,
             "text_encoder_2": components.text_encoder_2}
    random_lora_for({k: v for k, v in parts.items() if v is not None}, lora_dir / "me.safetensors", seed=seed)
    return host


@pytest.fixture(scope="module")
def sd15_host(tiny_sd15, sd15_adapter, tmp_path_factory):
    return _host_with_lora(tiny_sd15, sd15_adapter, tmp_path_factory.mktemp("Lora15"), seed=1)


@pytest.fixture(scope="module")
def sdxl_host(tiny_sdxl, sdxl_adapter, tmp_path_factory):
    return _host_with_lora(tiny_sdxl, sdxl_adapter, tmp_path_factory.mktemp("LoraXL"), seed=2)


def _array(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _txt2img(host, controls=(), **kwargs):
    options = {"steps": STEPS, "seed": 3, "size": SIZE} | kwargs
    return _array(host.txt2img("a person in a studio", controls=list(controls), **options))


def test_image_prompt_weight_steers_and_weight_zero_equals_no_adapter(sd15_host, reference):
    plain = _txt2img(sd15_host)
    at_zero = _txt2img(sd15_host, [Control("ip_adapter", reference, weight=0.0)])
    half = _txt2img(sd15_host, [Control("ip_adapter", reference, weight=0.5)])
    full = _txt2img(sd15_host, [Control("ip_adapter", reference, weight=1.0)])
    after = _txt2img(sd15_host)
    assert np.array_equal(plain, at_zero), "an image prompt at weight 0 must change nothing"
    assert np.abs(plain - full).mean() > 2.0
    assert np.abs(half - full).mean() > 1.0, "the weight must act as a scale"
    assert np.array_equal(plain, after), "the adapter stayed on after a call without an image prompt"


def test_the_reference_image_is_what_steers(sd15_host, reference, other_reference):
    first = _txt2img(sd15_host, [Control("ip_adapter", reference)])
    second = _txt2img(sd15_host, [Control("ip_adapter", other_reference)])
    again = _txt2img(sd15_host, [Control("ip_adapter", reference)])
    assert np.abs(first - second).mean() > 1.0
    assert np.array_equal(first, again)


def test_start_and_end_limit_the_image_prompt_to_part_of_the_run(sd15_host, reference):
    plain = _txt2img(sd15_host, steps=6)
    whole = _txt2img(sd15_host, [Control("ip_adapter", reference)], steps=6)
    late = _txt2img(sd15_host, [Control("ip_adapter", reference, start=0.5)], steps=6)
    assert np.abs(late - plain).mean() > 0.5 and np.abs(late - whole).mean() > 0.5


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_image_prompt_with_openpose_and_lora_in_txt2img_and_inpaint(request, family, reference, pose_map,
                                                                    face_mask):
    host = request.getfixturevalue(f"{family}_host")
    assert host.family == family
    controls = [Control("ip_adapter", reference, weight=0.8),
                Control("openpose", pose_map, weight=0.6, preprocessed=True)]
    pose_only = _txt2img(host, controls[1:], lora=[("me", 0.8)])
    both = _txt2img(host, controls, lora=[("me", 0.8)])
    assert both.shape == (64, 64, 3) and np.abs(both - pose_only).mean() > 1.0

    def inpaint(controls):
        return _array(host.inpaint(reference, face_mask, "a portrait", controls=controls, lora=[("me", 0.8)],
                                   steps=STEPS, denoise=0.75, seed=4, mask_blur=4))

    guided, unguided = inpaint(controls), inpaint(controls[1:])
    assert np.abs(guided - unguided).mean() > 0.5
    outside = np.ones((128, 128), bool)
    outside[24 - 8: 80 + 8, 40 - 8: 88 + 8] = False
    assert np.array_equal(guided[outside], _array(reference)[outside]), "the image prompt leaked outside the mask"


def test_second_call_loads_nothing(tiny_sdxl, sdxl_adapter, reference, pose_map):
    host = DiffusersHost(tiny_sdxl, ip_adapter=sdxl_adapter)
    controls = [Control("ip_adapter", reference), Control("openpose", pose_map, preprocessed=True)]
    host.txt2img("a", controls=controls, steps=2, size=SIZE)
    assert host.load_count == 4  # base model, openpose ControlNet, IP-Adapter and its image encoder
    host.txt2img("b", controls=controls, steps=2, size=SIZE, seed=9)
    host.txt2img("c", steps=2, size=SIZE)
    host.inpaint(reference, Image.new("L", reference.size, 255), "d", controls=controls[:1], steps=2, denoise=1.0)
    host.txt2img("e", controls=controls[:1], steps=2, size=SIZE)
    assert host.load_count == 4


def test_controlnet_models_lists_ip_adapter_only_when_one_fits(tiny_sd15, tiny_sdxl, sd15_adapter, sdxl_adapter):
    assert "ip_adapter" in DiffusersHost(tiny_sd15, ip_adapter=sd15_adapter).controlnet_models()
    assert "ip_adapter" in DiffusersHost(tiny_sdxl, ip_adapter=sdxl_adapter).controlnet_models()
    assert "ip_adapter" not in DiffusersHost(tiny_sd15).controlnet_models()
    wrong = DiffusersHost(tiny_sdxl, ip_adapter=sd15_adapter)
    assert "ip_adapter" not in wrong.controlnet_models()
    assert wrong.load_count == 0, "listing must read file headers only"


def test_ip_adapter_folder_beside_the_model_is_found_and_the_matching_family_chosen(
        tmp_path, tiny_sd15, tiny_sdxl, sd15_adapter, sdxl_adapter, reference):
    for base in (tiny_sd15, tiny_sdxl):
        (tmp_path / base.name).symlink_to(base, target_is_directory=True)
    shared = tmp_path / "ip-adapter"  # one folder of adapters for both families, h94-style subfolders
    shared.mkdir()
    (shared / "models").symlink_to(sd15_adapter, target_is_directory=True)
    (shared / "sdxl_models").symlink_to(sdxl_adapter, target_is_directory=True)
    for base, expected in ((tiny_sd15, "ip-adapter_sd15.safetensors"), (tiny_sdxl, "ip-adapter_sdxl.safetensors")):
        host = DiffusersHost(tmp_path / base.name)
        assert "ip_adapter" in host.controlnet_models()
        assert host._ip_adapter_file().path.name == expected
    image = host.txt2img("x", controls=[Control("ip_adapter", reference)], steps=2, size=SIZE)
    assert image.size == SIZE


def test_adapter_for_the_other_family_is_refused_before_loading(tiny_sd15, tiny_sdxl, sd15_adapter, sdxl_adapter,
                                                                reference):
    cases = ((tiny_sdxl, sd15_adapter / "ip-adapter_sd15.safetensors", "SDXL", 32),
             (tiny_sd15, sdxl_adapter / "ip-adapter_sdxl.safetensors", "SD1.5", 64))
    for base, adapter_file, label, adapter_width in cases:
        host = DiffusersHost(base, ip_adapter=adapter_file)
        expected = rf"no IP-Adapter for {label} base models .*is for a model with {adapter_width}-wide cross-attention"
        with pytest.raises(ControlError, match=expected):
            host.txt2img("x", controls=[Control("ip_adapter", reference)], steps=2, size=SIZE)
        assert host.load_count == 0


def test_controlnet_for_the_other_family_is_refused(tiny_sd15, tiny_sdxl, reference):
    pose = Image.new("RGB", SIZE)
    sdxl_with_sd15_net = DiffusersHost(tiny_sdxl, controlnets={"openpose": tiny_sd15 / "controlnet-openpose"})
    with pytest.raises(ControlError, match=r"made for SD1\.5 .*base model .* is SDXL"):
        sdxl_with_sd15_net.txt2img("x", controls=[Control("openpose", pose, preprocessed=True)], steps=2, size=SIZE)
    sd15_with_sdxl_net = DiffusersHost(tiny_sd15, controlnets={"canny": tiny_sdxl / "controlnet-canny"})
    with pytest.raises(ControlError, match=r"made for SDXL .*base model .* is SD1\.5"):
        sd15_with_sdxl_net.inpaint(reference, Image.new("L", reference.size, 255), "x",
                                   controls=[Control("canny", reference)], steps=2, denoise=1.0)
    assert sd15_with_sdxl_net.load_count == 1, "only the base model was loaded, not the wrong ControlNet"


def test_missing_adapter_or_encoder_says_what_to_put_where(tiny_sd15, sd15_adapter, reference, tmp_path):
    ip = [Control("ip_adapter", reference)]
    with pytest.raises(ControlError, match=r"ip-adapter_sd15\.safetensors .*image_encoder/.* in .*ip-adapter"):
        DiffusersHost(tiny_sd15).txt2img("x", controls=ip, steps=2, size=SIZE)
    with pytest.raises(ControlError, match="IP-Adapter not found: .*nowhere"):
        DiffusersHost(tiny_sd15, ip_adapter=tmp_path / "nowhere").txt2img("x", controls=ip, steps=2, size=SIZE)
    lonely = tmp_path / "ip-adapter_sd15.safetensors"
    shutil.copy(sd15_adapter / "ip-adapter_sd15.safetensors", lonely)
    with pytest.raises(ControlError, match=r"needs the CLIP vision encoder.*image_encoder"):
        DiffusersHost(tiny_sd15, ip_adapter=lonely).txt2img("x", controls=ip, steps=2, size=SIZE)
    with pytest.raises(ControlError, match="one ip_adapter control per call"):
        DiffusersHost(tiny_sd15, ip_adapter=sd15_adapter).txt2img("x", controls=ip * 2, steps=2, size=SIZE)


def test_adapter_files_are_told_apart_from_their_headers(sd15_adapter, tiny_sd15, tmp_path):
    adapter = inspect_ip_adapter(sd15_adapter / "ip-adapter_sd15.safetensors")
    assert (adapter.cross_attention_dim, adapter.image_embed_dim, adapter.uses_hidden_states) == (32, 32, False)
    assert adapter.layers == 10  # the tiny SD1.5 UNet's cross-attention layers
    face_id = tmp_path / "ip-adapter-faceid_sd15.safetensors"
    face_id_tensors = {"image_proj.proj.0.weight": torch.zeros(4, 4), "image_proj.norm.weight": torch.zeros(4),
                       "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4),
                       "ip_adapter.1.to_k_lora.down.weight": torch.zeros(1, 4)}
    save_file(face_id_tensors, str(face_id))
    with pytest.raises(ControlError, match="FaceID"):
        inspect_ip_adapter(face_id)
    with pytest.raises(ControlError, match="is not an IP-Adapter"):
        inspect_ip_adapter(tiny_sd15 / "unet" / "diffusion_pytorch_model.safetensors")


def test_family_is_read_from_the_checkpoint_without_loading(tiny_sdxl, tiny_sd15):
    for base, family in ((tiny_sdxl, "sdxl"), (tiny_sd15, "sd15")):
        host = DiffusersHost(base)
        assert host.family == family and host.load_count == 0
