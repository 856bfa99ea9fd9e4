"""An SDXL portrait with the default parameters inside the WebUI (double, tiny SDXL): SDXL has no colour
control, so the portrait runs with the controls SDXL has and says which one it left out."""

from __future__ import annotations

import pytest
from PIL import Image
from webui_double import generation, webui_started

from portrait_core.errors import ControlError
from portrait_core.generate.identity import load_identity
from portrait_core.generate.pipeline import PortraitGenerator
from portrait_core.hosts.base import Control
from portrait_core.hosts.webui_host import WebUIHost
from portrait_core.params import GenerateParams

pytestmark = pytest.mark.usefixtures("webui_state_restored")

# The SDXL model names the WebUI path looks for; the tiny SDXL has canny and openpose ControlNets,
# so the tile name is played by its canny network (random weights either way).
SDXL_MODELS = {"diffusers_xl_canny_full": "canny", "thibaud_xl_openpose": "openpose", "xl_tile_realistic": "canny"}
FAST = {"first_pass_steps": 3, "second_pass_steps": 4, "crop_size": 128, "seed": 5}


@pytest.fixture
def sdxl_webui(tmp_path, tiny_sdxl):
    backend = generation.DiffusersBackend(tiny_sdxl)
    with webui_started(tmp_path / "webui", ["--lora-dir", str(tmp_path / "loras")]):
        generation.start(backend, controlnet_models=SDXL_MODELS)
        yield backend


@pytest.fixture(scope="module")
def template(shared_faces_dir):
    image = Image.open(shared_faces_dir / "obama.jpg").convert("RGB")
    return image.resize((image.width // 2, image.height // 2), Image.LANCZOS)


def test_an_sdxl_portrait_with_default_parameters_leaves_out_colour_and_says_why(
        sdxl_webui, prepared_obama, template, tmp_path):
    from portrait_core.faces import get_face_analyzer

    host = WebUIHost(family="sdxl")
    identity = load_identity("obama", root=prepared_obama, lora_dir=tmp_path / "loras")
    params = GenerateParams(identities=["obama"], **FAST, ip_adapter_weight=0.0, lora_weight=0.0)
    assert params.color_weight > 0  # the default asks for colour
    generator = PortraitGenerator(host, get_face_analyzer("embedded"))
    [result] = generator.generate(template, [identity], params,
                                  template_name="obama.jpg")
    assert result.image.size == template.size
    assert any("colour control left out" in note and "SDXL" in note for note in result.notes), result.notes
    first, second = sdxl_webui.runs[-2:]
    assert [c.kind for c in first.controls] == ["canny", "openpose"]
    assert len(second.controls) == 2  # canny + tile


def test_the_host_itself_still_refuses_a_colour_control_on_sdxl(sdxl_webui, template):
    mask = Image.new("L", (64, 64), 255)
    with pytest.raises(ControlError, match="no sdxl ControlNet for color"):
        WebUIHost(family="sdxl").inpaint(template.resize((64, 64)), mask, "a portrait", steps=4,
                                         controls=[Control("color", template.resize((64, 64)))])


def test_sdxl_calls_do_not_fetch_the_live_preview_network_offline(sdxl_webui, template):
    """The WebUI's default preview method ("Approx NN") loads vaeapprox-sdxl.pt before sampling and
    downloads it when missing; our calls switch to "Approx cheap" for themselves and leave the setting."""
    from modules import processing, shared

    shared.sd_model = type("SDXLModel", (), {"is_sdxl": True})()
    try:
        small = template.resize((64, 64))
        mask = Image.new("L", (64, 64), 255)
        p = processing.StableDiffusionProcessingTxt2Img(prompt="x", steps=2, width=64, height=64)
        with pytest.raises(OSError, match="name resolution"):  # the WebUI's own call fails offline
            processing.process_images(p)
        image = WebUIHost(family="sdxl").inpaint(small, mask, "a portrait", steps=4, denoise=0.5)
        assert image.size == (64, 64)
        assert shared.opts.show_progress_type == "Approx NN"  # the user's setting is unchanged
    finally:
        del shared.sd_model


def test_a_download_the_webui_attempts_offline_is_named_not_a_bare_urlerror(sdxl_webui, template):
    """Where the preview setting cannot be overridden (a WebUI without it in its settings list), the failed
    download is reported as a WebUI error that says which setting to change."""
    from modules import shared
    from portrait_core.hosts.webui_host import WebUIError

    label = shared.opts.data_labels.pop("show_progress_type")
    shared.opts.data["show_progress_type"] = "Approx NN"
    shared.sd_model = type("SDXLModel", (), {"is_sdxl": True})()
    try:
        with pytest.raises(WebUIError, match="Live preview method"):
            WebUIHost(family="sdxl").inpaint(template.resize((64, 64)), Image.new("L", (64, 64), 255),
                                             "a portrait", steps=4, denoise=0.5)
    finally:
        shared.opts.data_labels["show_progress_type"] = label
        del shared.sd_model
