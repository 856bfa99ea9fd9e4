"""Awkward templates through the generation service: a close-up whose face fills the frame renders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from portrait_core.core.face_imaging import crop_box_around
from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.params import GenerateParams
from tests.lora_factory import random_lora_for
from tests.service_factory import services_on

FAST = {"first_pass_steps": 3, "second_pass_steps": 4, "crop_size": 128, "seed": 3}


@pytest.fixture
def services(tmp_path, tiny_sd15, prepared_obama):
    from portrait_core.models.checkpoints.loading import load_components

    parts = load_components(tiny_sd15)
    (tmp_path / "Lora").mkdir()
    random_lora_for({"unet": parts.unet, "text_encoder": parts.text_encoder}, tmp_path / "Lora" / "obama.safetensors")
    made = services_on(DiffusersHost(tiny_sd15, lora_dir=tmp_path / "Lora"), identities=prepared_obama,
                       home=tmp_path / "home")
    yield made
    made.close()


def selfie_close_up(shared_faces_dir, analyzer) -> Image.Image:
    """A head shot as phones take them: cropped tight around the face, so the face fills the frame.
    Odd sizes on purpose (not multiples of 8)."""
    photo = Image.open(shared_faces_dir / "obama.jpg").convert("RGB")
    [face] = analyzer.detect(np.asarray(photo))
    x0, y0, x1, y1 = face.box
    centre_x, centre_y, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
    box = (round(centre_x - 0.65 * side), round(centre_y - 0.75 * side),
           round(centre_x + 0.65 * side), round(centre_y + 0.85 * side))
    return photo.crop(box).resize((251, 309), Image.LANCZOS)


def test_a_close_up_whose_face_fills_the_frame_renders_at_the_template_size(services, shared_faces_dir):
    template = selfie_close_up(shared_faces_dir, services.generation.generator.analyzer)
    [face] = services.generation.generator.analyzer.detect(np.asarray(template))
    # The precondition of the old crash: the 3x crop around the face reaches all four borders.
    assert crop_box_around(face.box, template.size) == (0, 0, *template.size)
    [(result, infotext)] = services.generation.generate(GenerateParams(identities=["obama"], **FAST),
                                                        [("selfie.png", template)])
    assert result.image.size == template.size
    assert result.template == "selfie.png" and "selfie.png" in infotext
    changed = np.abs(np.asarray(result.image, dtype=int) - np.asarray(template, dtype=int)).max(-1) > 8
    fx0, fy0, fx1, fy1 = (int(v) for v in face.box)
    assert changed[fy0:fy1, fx0:fx1].mean() > 0.2  # the face was repainted, not handed back untouched


# -- a corpus of awkward templates: each renders at its own size, or is refused naming the template -------

@pytest.fixture(scope="module")
def corpus_services(tmp_path_factory, tiny_sd15, prepared_obama):
    from portrait_core.models.checkpoints.loading import load_components

    root = tmp_path_factory.mktemp("corpus")
    parts = load_components(tiny_sd15)
    (root / "Lora").mkdir()
    random_lora_for({"unet": parts.unet, "text_encoder": parts.text_encoder}, root / "Lora" / "obama.safetensors")
    made = services_on(DiffusersHost(tiny_sd15, lora_dir=root / "Lora"), identities=prepared_obama,
                       home=root / "home")
    yield made
    made.close()


def _face_photo(shared_faces_dir) -> Image.Image:
    photo = Image.open(shared_faces_dir / "obama.jpg").convert("RGB")
    return photo.resize((photo.width // 2, photo.height // 2))


def _at_border(photo: Image.Image, side: str) -> Image.Image:
    """The photo cut so the face runs off one border (about a third of it is outside the frame)."""
    w, h = photo.size
    box = {"left": (int(w * 0.42), 0, w, h), "right": (0, 0, int(w * 0.58), h),
           "top": (0, int(h * 0.32), w, h), "bottom": (0, 0, w, int(h * 0.5))}[side]
    return photo.crop(box)


def _six_faces(photo: Image.Image) -> Image.Image:
    tile = photo.resize((photo.width // 3, photo.height // 3))
    sheet = Image.new("RGB", (tile.width * 3, tile.height * 2), "white")
    for index in range(6):
        sheet.paste(tile, ((index % 3) * tile.width, (index // 3) * tile.height))
    return sheet


def _tiny_face(photo: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (320, 320), (90, 100, 110))
    canvas.paste(photo.resize((photo.width // 8, photo.height // 8)), (140, 120))
    return canvas


HOSTILE = {
    "left.png": lambda p, d: _at_border(p, "left"), "right.png": lambda p, d: _at_border(p, "right"),
    "top.png": lambda p, d: _at_border(p, "top"), "bottom.png": lambda p, d: _at_border(p, "bottom"),
    "tiny-face.png": lambda p, d: _tiny_face(p), "six-faces.png": lambda p, d: _six_faces(p),
    "no-face.png": lambda p, d: Image.linear_gradient("L").convert("RGB").resize((200, 260)),
    "profile.jpg": lambda p, d: Image.open(d / "obama_partial_face.jpg"),
    "rotated.png": lambda p, d: p.rotate(90, expand=True),
    "grayscale.png": lambda p, d: p.convert("L"),
    "strip.png": lambda p, d: Image.new("RGB", (1, 4000), (128, 128, 128)),
    "wide-8000.png": lambda p, d: Image.new("RGB", (8000, 300), (128, 128, 128)),
    "rgba.png": lambda p, d: p.convert("RGBA"),
    "16-bit.png": lambda p, d: p.convert("L").point(lambda v: v * 256, "I").convert("I;16"),
    "cmyk.jpg": lambda p, d: p.convert("CMYK"),
}


# Each shows one whole, frontal face, so each must render (the others may be refused, by name).
HAS_A_FACE = {"left.png", "right.png", "bottom.png", "rotated.png", "grayscale.png", "rgba.png", "16-bit.png",
              "cmyk.jpg", "six-faces.png"}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_an_awkward_template_renders_or_is_refused_naming_it(corpus_services, shared_faces_dir, name):
    from portrait_core.errors import PortraitError

    template = HOSTILE[name](_face_photo(shared_faces_dir), shared_faces_dir)
    try:
        results = corpus_services.generation.generate(GenerateParams(identities=["obama"], **FAST),
                                                      [(name, template)])
    except PortraitError as refused:
        assert name in str(refused), f"the refusal does not name the template: {refused}"
        assert name not in HAS_A_FACE, f"{name} shows a whole face, yet: {refused}"
        print(f"{name}: refused: {refused}")  # shown with -s: what a user is told
        return
    [(result, _)] = results
    assert result.image.size == template.size and result.image.mode == "RGB"
    print(f"{name}: rendered, {len(result.faces)} face(s), notes: {result.notes}")
