"""WebUIHost against the WebUI double, whose process_images() really generates (DiffusersHost on the tiny model)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from webui_double import generation, webui_started

from portrait_core.errors import (
    ControlError,
    GenerationInterrupted,
    InputImageError,
    LoraFileError,
    ModelUnavailableError,
)
from portrait_core.hosts.base import Control, Host
from portrait_core.hosts.webui_host import WebUIHost, _checked_unit
from tests.lora_factory import random_lora_for

pytestmark = pytest.mark.usefixtures("webui_state_restored")

STEPS = 4
SIZE = 64


@pytest.fixture(scope="module")
def backend(tiny_sd15):
    return generation.DiffusersBackend(tiny_sd15)




@pytest.fixture
def webui(tmp_path, backend):
    """A started WebUI with ControlNet and the four SD1.5 models the tiny model can play."""
    with webui_started(tmp_path / "webui", ["--lora-dir", str(tmp_path / "loras")]):
        generation.start(backend)
        yield backend


@pytest.fixture(scope="module")
def portrait(astronaut):
    return astronaut.resize((SIZE, SIZE), Image.LANCZOS)


@pytest.fixture(scope="module")
def face_mask():
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (20, 12, 44, 40))
    return mask


def pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def inpaint(host, image, mask, **kwargs):
    return host.inpaint(image, mask, "a studio portrait", **({"steps": STEPS, "denoise": 0.75, "seed": 7} | kwargs))


def sent_units(webui):
    """The ControlNet units as the extension read them from the last processing object."""
    import internal_controlnet.external_code as external_code

    return [unit for unit in external_code.get_all_units_in_processing(webui.runs[-1].p) if unit.enabled]


# ---- img2img / txt2img -----------------------------------------------------------------------------------
def test_webui_host_satisfies_the_host_protocol():
    assert isinstance(WebUIHost(), Host)


def test_inpaint_returns_the_requested_size_and_keeps_pixels_away_from_the_mask(webui, portrait, face_mask):
    host = WebUIHost()
    assert inpaint(host, portrait, face_mask, size=(96, 64)).size == (96, 64)
    result = pixels(inpaint(host, portrait, face_mask, mask_blur=4))
    outside = np.ones((SIZE, SIZE), bool)
    outside[12 - 8:40 + 8, 20 - 8:44 + 8] = False  # the mask plus its feather
    assert np.array_equal(result[outside], pixels(portrait)[outside])
    assert np.abs(result[16:36, 24:40] - pixels(portrait)[16:36, 24:40]).mean() > 5, "the face was not repainted"


def test_the_processing_object_carries_what_the_pipeline_asked_for(webui, portrait, face_mask):
    WebUIHost().inpaint(portrait, face_mask, "a portrait", "blurry", steps=5, denoise=0.6, cfg=5.5, seed=1234,
                        sampler="DPM++ 2M Karras", mask_blur=6)
    run = webui.runs[-1]
    p = run.p
    assert type(p).__name__ == "StableDiffusionProcessingImg2Img"
    assert p.is_api is True
    assert p.image_mask.size == (SIZE, SIZE) and p.init_images[0].size == (SIZE, SIZE)
    assert (p.inpainting_fill, p.inpaint_full_res, p.inpainting_mask_invert, p.mask_blur_x) == (1, False, 0, 6)
    assert (p.denoising_strength, p.steps, p.cfg_scale, p.width, p.height) == (0.6, 5, 5.5, SIZE, SIZE)
    assert (p.sampler_name, p.scheduler) == ("DPM++ 2M", "Karras")
    # The built-in Seed/Sampler scripts would have reset these to their UI defaults without is_api.
    assert run.seed == 1234 and run.sampler == "DPM++ 2M Karras"
    assert (p.negative_prompt, p.restore_faces, p.do_not_save_samples, p.do_not_save_grid) == ("blurry", False,
                                                                                               True, True)


def test_nothing_lands_in_the_webuis_output_folders(webui, portrait, face_mask, tmp_path):
    WebUIHost().inpaint(portrait, face_mask, "a portrait", steps=STEPS, denoise=0.75)
    assert not (tmp_path / "webui" / "outputs").exists()


def test_the_double_overwrites_the_seed_when_is_api_is_missing(webui):
    """Guards the double itself: the pitfall the host avoids is modelled."""
    from modules import processing, scripts

    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", seed=99, steps=3, width=SIZE, height=SIZE)
    p.scripts = scripts.scripts_txt2img
    p.script_args = (0, -1, False, -1, 0, 0, 0, 20, "DPM++ 2M", "Automatic")
    assert (p.seed, p.steps) == (-1, 20)


def test_txt2img_returns_the_requested_size_through_the_txt2img_processing(webui):
    image = WebUIHost().txt2img("a portrait", steps=STEPS, seed=3, size=(64, 96))
    assert image.size == (64, 96)
    assert type(webui.runs[-1].p).__name__ == "StableDiffusionProcessingTxt2Img"
    assert webui.runs[-1].p.enable_hr is False


def test_an_unknown_sampler_is_refused_instead_of_silently_replaced(webui, portrait, face_mask):
    with pytest.raises(InputImageError, match="Euler b"):
        WebUIHost().inpaint(portrait, face_mask, "x", sampler="Euler b")
    assert webui.runs == []


def test_the_checkpoint_is_overridden_for_the_call_and_restored(tmp_path, backend, portrait, face_mask):
    checkpoints = tmp_path / "webui" / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    for name in ("base.safetensors", "realistic.safetensors"):
        (checkpoints / name).write_bytes(b"")
    with webui_started(tmp_path / "webui", saved_settings={"sd_model_checkpoint": "base.safetensors"}):
        generation.start(backend)
        from modules import shared

        host = WebUIHost(checkpoint="realistic.safetensors")
        assert host.checkpoints() == ["base.safetensors", "realistic.safetensors"]
        inpaint(host, portrait, face_mask)
        assert backend.runs[-1].p.sd_model_name == "realistic"
        assert shared.opts.sd_model_checkpoint == "base.safetensors"
        with pytest.raises(ModelUnavailableError, match=r"'dreamy'.*Stable-diffusion"):
            inpaint(WebUIHost(checkpoint="dreamy"), portrait, face_mask)
        assert len(backend.runs) == 1


# ---- ControlNet ------------------------------------------------------------------------------------------
def test_controls_reach_controlnet_as_units_it_accepts(webui, portrait, face_mask):
    controls = [Control("canny", portrait, 0.5), Control("openpose", portrait, 0.6, preprocessed=True),
                Control("color", portrait, 0.85, 0.1, 0.9, mode="control")]
    inpaint(WebUIHost(), portrait, face_mask, controls=controls)
    units = sent_units(webui)
    assert [u.module for u in units] == ["canny", "none", "t2ia_color_grid"]
    assert [u.model.split(" [")[0] for u in units] == ["control_v11p_sd15_canny", "control_v11p_sd15_openpose",
                                                       "t2iadapter_color_sd14v1"]
    assert [u.weight for u in units] == [0.5, 0.6, 0.85]
    assert [u.control_mode.value for u in units] == ["Balanced", "Balanced", "ControlNet is more important"]
    assert {u.resize_mode.value for u in units} == {"Just Resize"}
    assert (units[2].guidance_start, units[2].guidance_end) == (0.1, 0.9)
    assert (units[0].threshold_a, units[0].threshold_b) == (100, 200)
    assert [c.kind for c in webui.runs[-1].controls] == ["canny", "openpose", "color"], "controls not applied"


def test_more_units_than_the_ui_has_leave_the_webuis_script_layout_as_it_was(webui, portrait, face_mask):
    from modules import scripts

    layout = [(script.title(), script.args_from, script.args_to) for script in scripts.scripts_img2img.scripts]
    controls = [Control("canny", portrait), Control("openpose", portrait, preprocessed=True),
                Control("tile", portrait), Control("color", portrait)]  # 4 units; the UI has 3
    inpaint(WebUIHost(), portrait, face_mask, controls=controls)
    assert [c.kind for c in webui.runs[-1].controls] == ["canny", "openpose", "tile", "color"]
    assert [(script.title(), script.args_from, script.args_to) for script in scripts.scripts_img2img.scripts] == layout


def test_the_unit_dicts_use_only_the_real_units_field_names_and_enum_strings(webui, portrait, face_mask,
                                                                             monkeypatch):
    import internal_controlnet.external_code as external_code

    seen = []
    original = external_code.update_cn_script_in_processing
    monkeypatch.setattr(external_code, "update_cn_script_in_processing",
                        lambda p, units, **kw: (seen.extend(units), original(p, units, **kw)))
    inpaint(WebUIHost(), portrait, face_mask, controls=[Control("tile", portrait)])
    [unit] = seen
    assert isinstance(unit, dict)
    assert set(unit) <= set(external_code.ControlNetUnit.__fields__)
    assert (unit["control_mode"], unit["resize_mode"]) == ("Balanced", "Just Resize")
    assert isinstance(unit["image"], np.ndarray) and unit["image"].shape == (SIZE, SIZE, 3)


def test_a_unit_the_extension_would_reject_or_misread_is_refused(webui):
    import internal_controlnet.external_code as external_code

    good = {"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny", "control_mode": "Balanced"}
    assert _checked_unit(external_code, good) == good
    with pytest.raises(ControlError, match="control_mode"):
        _checked_unit(external_code, good | {"control_mode": 0})  # ints are not ControlMode values
    with pytest.raises(ControlError, match="resize_mode"):
        _checked_unit(external_code, good | {"resize_mode": 1})
    with pytest.raises(ControlError, match="weigth"):  # the real extension would drop it without a word
        _checked_unit(external_code, good | {"weigth": 0.5})
    with pytest.raises(ControlError, match="t2ia_colour"):
        _checked_unit(external_code, good | {"module": "t2ia_colour"})


def test_a_missing_controlnet_model_is_refused_before_generating(tmp_path, backend, portrait, face_mask):
    with webui_started(tmp_path / "webui"):
        generation.start(backend, controlnet_models={"control_v11p_sd15_canny": "canny"})
        host = WebUIHost()
        assert host.controlnet_models() == ["canny"]
        controls = [Control("canny", portrait), Control("color", portrait), Control("tile", portrait)]
        with pytest.raises(ControlError) as refused:
            inpaint(host, portrait, face_mask, controls=controls)
        message = str(refused.value)
        assert "color" in message and "t2iadapter_color_sd14v1" in message and "tile" in message
        assert str(tmp_path / "webui" / "models" / "ControlNet") in message
        assert "canny (" not in message
        assert backend.runs == []


def test_a_model_file_added_after_start_is_found_without_restart(tmp_path, backend, portrait, face_mask):
    with webui_started(tmp_path / "webui"):
        generation.start(backend, controlnet_models={"control_v11p_sd15_canny": "canny"})
        from internal_controlnet import extension

        extension.model_kinds["t2iadapter_color_sd14v1"] = "color"
        (extension.models_dir() / "t2iadapter_color_sd14v1.pth").write_bytes(b"downloaded later")
        inpaint(WebUIHost(), portrait, face_mask, controls=[Control("color", portrait)])
        assert [c.kind for c in backend.runs[-1].controls] == ["color"]


def test_a_unit_the_webui_silently_dropped_is_detected(webui, portrait, face_mask):
    from internal_controlnet import extension

    from modules import errors

    del extension.model_kinds["control_v11f1e_sd15_tile"]  # listed, but fails to load during generation
    with pytest.raises(ControlError, match="applied 0 of the 2 requested units"):
        inpaint(WebUIHost(), portrait, face_mask, controls=[Control("canny", portrait), Control("tile", portrait)])
    assert webui.runs[-1].controls == [], "the double should have generated without control"
    assert any("Error running process" in message for message in errors.reported)


def test_raw_openpose_without_the_annotator_weights_is_refused_before_generating(webui, portrait, face_mask):
    with pytest.raises(ControlError, match=r"openpose_full needs .*body_pose_model\.pth"):
        inpaint(WebUIHost(), portrait, face_mask, controls=[Control("openpose", portrait)])
    assert webui.runs == []


def test_ip_adapter_needs_its_model_and_the_clip_encoder(webui, portrait, face_mask):
    host = WebUIHost()
    assert "ip_adapter" not in host.controlnet_models()
    with pytest.raises(ControlError, match="ip-adapter-plus-face_sd15"):
        inpaint(host, portrait, face_mask, controls=[Control("ip_adapter", portrait, 0.6)])


def test_without_controlnet_plain_calls_work_and_controls_are_refused(tmp_path, backend, portrait, face_mask):
    with webui_started(tmp_path / "webui"):
        generation.start(backend, controlnet=False)
        host = WebUIHost()
        assert host.controlnet_models() == []
        assert inpaint(host, portrait, face_mask).size == (SIZE, SIZE)
        with pytest.raises(ControlError, match="not installed"):
            inpaint(host, portrait, face_mask, controls=[Control("canny", portrait)])
        assert len(backend.runs) == 1


def test_a_controlnet_too_old_for_dict_units_is_refused(webui, portrait, face_mask, monkeypatch):
    import internal_controlnet.external_code as external_code

    monkeypatch.setattr(external_code, "get_api_version", lambda: 1)
    host = WebUIHost()
    assert host.controlnet_models() == []
    with pytest.raises(ControlError, match="API version 1 is too old"):
        inpaint(host, portrait, face_mask, controls=[Control("canny", portrait)])
    assert inpaint(host, portrait, face_mask).size == (SIZE, SIZE), "no controls: ControlNet is not needed"


def test_only_the_generated_image_comes_back_whatever_the_users_settings(tmp_path, backend, portrait, face_mask):
    saved = {"return_mask": True, "return_mask_composite": True, "control_net_no_detectmap": True}
    with webui_started(tmp_path / "webui", saved_settings=saved):
        generation.start(backend)
        from modules import shared

        host = WebUIHost()
        controls = [Control("canny", portrait, 1.0), Control("color", portrait, 1.0)]
        result = pixels(inpaint(host, portrait, face_mask, controls=controls))
        generated = pixels(backend.runs[-1].p.init_images[0])
        canny_map = pixels(backend.runs[-1].controls[0].image)
        assert not np.array_equal(result, canny_map)
        assert np.array_equal(result[:4], generated[:4]), "not the picture: its top rows should be the original"
        assert shared.opts.control_net_no_detectmap is True, "the user's setting must be restored"


def test_a_webui_without_one_of_the_overridden_settings_still_generates(webui, portrait, face_mask):
    from modules import shared

    shared.opts.data_labels.pop("img2img_color_correction")  # an older or forked WebUI
    shared.opts.data["img2img_color_correction"] = True
    assert inpaint(WebUIHost(), portrait, face_mask).size == (SIZE, SIZE)


# ---- LoRA ------------------------------------------------------------------------------------------------
def test_a_lora_goes_into_the_prompt_and_changes_the_picture(webui, portrait, face_mask, tmp_path):
    components = webui.host._load_components()
    path = random_lora_for({"unet": components.unet, "text_encoder": components.text_encoder},
                           tmp_path / "loras" / "me.safetensors")
    host = WebUIHost()
    plain = pixels(inpaint(host, portrait, face_mask))
    with_lora = pixels(inpaint(host, portrait, face_mask, lora=[("me", 0.8)]))
    assert webui.runs[-1].p.prompt == "a studio portrait <lora:me:0.8>"
    assert webui.runs[-1].loras == [(path, 0.8)]
    assert np.abs(plain - with_lora).mean() > 1.0
    inpaint(host, portrait, face_mask, lora=[(path, 0.5)])
    assert webui.runs[-1].p.prompt.endswith("<lora:me:0.5>")


@pytest.mark.parametrize("name", ["../me", "sub/me", ".me", "me:1>", "missing", ""])
def test_bad_or_missing_lora_names_are_refused_before_generating(webui, portrait, face_mask, tmp_path, name):
    (tmp_path / "loras").mkdir(exist_ok=True)
    (tmp_path / "loras" / "me.safetensors").write_bytes(b"")
    with pytest.raises(LoraFileError):
        inpaint(WebUIHost(), portrait, face_mask, lora=[(name, 0.9)])
    assert webui.runs == []


def test_a_lora_file_outside_the_webuis_lora_folder_is_refused(webui, portrait, face_mask, tmp_path):
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(b"")
    with pytest.raises(LoraFileError, match="inside the WebUI's LoRA folder"):
        inpaint(WebUIHost(), portrait, face_mask, lora=[(elsewhere, 0.9)])
    assert WebUIHost().lora_dir() == tmp_path / "loras"


# ---- interrupt, progress, queue lock -------------------------------------------------------------------------
def test_interrupt_through_shared_state_raises_generation_interrupted(webui):
    from modules import shared

    webui.step_hook = lambda step, total: shared.state.interrupt() if step == 2 else None
    with pytest.raises(GenerationInterrupted) as stopped:
        WebUIHost().txt2img("a portrait", steps=6, seed=1, size=(SIZE, SIZE))
    assert stopped.value.total == 6
    webui.step_hook = None
    assert WebUIHost().txt2img("a portrait", steps=2, seed=1, size=(SIZE, SIZE)).size == (SIZE, SIZE)


def test_an_interrupt_between_calls_of_a_session_stops_the_rest(webui, portrait, face_mask):
    host = WebUIHost()
    with host.session():
        inpaint(host, portrait, face_mask)
        host.interrupt()
        assert host.interrupted()
        with pytest.raises(GenerationInterrupted):
            inpaint(host, portrait, face_mask)
    assert len(webui.runs) == 1, "the second pass must not have run"


def test_generation_holds_the_queue_lock_against_other_threads(webui):
    from modules import call_queue

    others_got_in = []

    def try_from_another_thread(step, total):
        attempt = threading.Thread(target=lambda: others_got_in.append(call_queue.queue_lock.acquire(blocking=False)))
        attempt.start()
        attempt.join()

    webui.step_hook = try_from_another_thread
    WebUIHost().txt2img("a portrait", steps=2, seed=1, size=(SIZE, SIZE))
    assert others_got_in == [False, False]
    assert call_queue.queue_lock.acquire(blocking=False), "the lock must be free after the call"
    call_queue.queue_lock.release()


def test_inside_the_webuis_gpu_wrapper_the_host_does_not_deadlock(webui):
    from modules import call_queue

    done = []
    wrapped = call_queue.wrap_gradio_gpu_call(
        lambda: done.append(WebUIHost(caller_holds_queue_lock=True).txt2img("x", steps=2, size=(SIZE, SIZE))))
    worker = threading.Thread(target=wrapped, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert done and done[0].size == (SIZE, SIZE)


def test_progress_reaches_the_webuis_progress_bar_and_the_callback(webui):
    from modules import shared

    seen = []
    WebUIHost(progress_callback=lambda *args: seen.append(args)).progress(2, 5, "pass 2: the ring")
    assert (shared.state.job_no, shared.state.job_count, shared.state.textinfo) == (2, 5, "pass 2: the ring")
    assert seen == [(2, 5, "pass 2: the ring")]


def test_the_webuis_progress_bar_follows_a_whole_portrait_once_from_0_to_100(webui, prepared_obama, astronaut,
                                                                             shared_faces_dir, tmp_path):
    """The page polls /internal/progress with the task id it sent: queued, then active with a fraction that
    only grows over both passes (not 100% after pass 1), then completed."""
    from modules import progress
    from portrait_core.faces import get_face_analyzer
    from portrait_core.generate.identity import load_identity
    from portrait_core.generate.pipeline import PortraitGenerator
    from portrait_core.params import GenerateParams

    template = Image.open(shared_faces_dir / "obama.jpg").convert("RGB").resize((256, 256))
    identity = load_identity("obama", root=prepared_obama, lora_dir=tmp_path)
    params = GenerateParams(identities=["obama"], first_pass_steps=4, second_pass_steps=6, crop_size=128, seed=1,
                            ip_adapter_weight=0.0)
    seen = []
    webui.step_hook = lambda step, total: seen.append(progress.progressapi("task(page-1)"))
    host = WebUIHost()
    with host.session("task(page-1)"):
        assert progress.progressapi("task(page-1)")["active"]
        PortraitGenerator(host, get_face_analyzer("embedded")).generate(template, [identity], params)
    fractions = [answer["progress"] for answer in seen]
    assert all(answer["active"] for answer in seen)
    assert fractions == sorted(fractions) and 0 < fractions[0] <= 0.5 < fractions[-1] <= 1.0, fractions
    assert progress.progressapi("task(page-1)")["completed"]
    with host.session("portrait studio"):  # any other caller is in the WebUI's queue under an id of its own
        assert progress.current_task.startswith("task(portrait-")


# ---- face restoration and upscalers -----------------------------------------------------------------------------
def test_codeformer_without_weights_says_so_and_leaves_the_image(webui, portrait):
    host = WebUIHost()
    with pytest.raises(ModelUnavailableError, match=r"codeformer-v0\.1\.0\.pth.*Codeformer"):
        host.restore_faces(portrait, 0.7)
    result = host.restore_faces_result(portrait, 0.7)
    assert result.applied is False and result.image is portrait


def test_codeformer_runs_with_the_given_fidelity_weight(webui, portrait, tmp_path):
    from modules import codeformer_model

    (tmp_path / "webui" / "models" / "Codeformer" / "codeformer-v0.1.0.pth").write_bytes(b"weights")
    host = WebUIHost()
    strong = pixels(host.restore_faces(portrait, 0.2))
    faithful = pixels(host.restore_faces(portrait, 0.9))
    assert codeformer_model.codeformer.calls == [0.2, 0.9]
    change = [np.abs(image - pixels(portrait)).mean() for image in (strong, faithful)]
    assert change[0] > change[1] > 0
    assert host.last_restore.applied is True


def test_gfpgan_can_be_chosen_and_its_missing_weights_are_noted(webui, portrait, tmp_path):
    host = WebUIHost(face_restorer="GFPGAN")
    assert "GFPGANv1.4.pth" in host.restore_faces_result(portrait).note
    (tmp_path / "webui" / "models" / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"weights")
    assert not np.array_equal(pixels(host.restore_faces(portrait)), pixels(portrait))


def test_upscalers_by_name_and_a_model_upscaler_without_weights(webui, portrait, tmp_path):
    host = WebUIHost()
    lanczos = host.upscale(portrait, 2.5, "Lanczos")
    assert lanczos.size == (160, 160) and host.last_upscale.applied
    fallback = host.upscale(portrait, 2.0, "R-ESRGAN 4x+")
    assert fallback.size == (128, 128) and not host.last_upscale.applied
    assert "R-ESRGAN 4x+" in host.last_upscale.note
    Path(tmp_path / "webui" / "models" / "RealESRGAN").mkdir(parents=True, exist_ok=True)
    (tmp_path / "webui" / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth").write_bytes(b"weights")
    assert host.upscale_result(portrait, 2.0, "r-esrgan 4x+").applied
    with pytest.raises(InputImageError, match=r"SwinIR.*Lanczos"):
        host.upscale(portrait, 2.0, "SwinIR")


def test_the_sampler_list_is_the_webuis_own_and_a_sampler_it_lacks_is_refused_before_anything_runs(
        webui, prepared_obama, tmp_path):
    from portrait_core.errors import ParameterError
    from portrait_core.params import GenerateParams
    from tests.service_factory import services_on

    host = WebUIHost()
    offered = host.samplers()
    assert {"Euler a", "DPM++ 2M", "DPM++ 2M Karras"} <= set(offered) and "PNDM" not in offered
    services = services_on(host, identities=prepared_obama, home=tmp_path / "home")
    try:
        with pytest.raises(ParameterError, match="'PNDM' is not offered by this host"):
            services.generation.check(GenerateParams(identities=["obama"], sampler="PNDM"))
        assert webui.runs == []
    finally:
        services.close()
