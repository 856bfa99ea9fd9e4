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
