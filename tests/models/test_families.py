"""Model families: one table of what differs between SD1.5 and SDXL."""

from __future__ import annotations

import pytest

from portrait_core.errors import CheckpointError
from portrait_core.models.families import SD15, SDXL, family, family_of_components, family_of_kohya_version
from portrait_core.services.loras import family_label
from portrait_core.training.trainer import default_rank_alpha


def test_inpaint_variants_belong_to_their_base_family_and_others_are_refused_by_name():
    assert family("sdxl-inpaint") is SDXL and family("sd15") is SD15
    with pytest.raises(CheckpointError, match="'sd3'"):
        family("sd3")


def test_the_training_defaults_and_labels_come_from_the_family():
    assert default_rank_alpha("sdxl", None, None) == (32, 16.0)
    assert default_rank_alpha("sd15", None, None) == (128, 64.0)
    assert default_rank_alpha("sd15", 8, None) == (8, 4.0), "alpha follows a given rank"
    assert (family_label("sdxl"), family_label("sd15-inpaint"), family_label(None)) == (
        "SDXL", "SD1.5", "an unknown model family")


def test_kohya_versions_and_components_name_their_family():
    assert family_of_kohya_version("sdxl_base_v1-0") is SDXL and family_of_kohya_version("sd_v1") is SD15
    assert family_of_kohya_version("sd_v2") is None
    assert family_of_components({"unet": 0, "text_encoder": 0, "text_encoder_2": 0}) is SDXL
    assert SDXL.text_encoders == ("text_encoder", "text_encoder_2") and SD15.text_encoders == ("text_encoder",)
