"""Merging checkpoints by identity score: exact weighted averages, sane fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from portrait_core.errors import LoraFileError
from portrait_core.models.lora import LoraLayer, read_lora_file, write_lora_file
from portrait_core.training.merge import ValidationScore, checkpoint_weights, weighted_average_loras
from portrait_core.training.trainer import planned_steps


def _checkpoint(folder: Path, name: str, value: float, alpha: float = 2.0) -> Path:
    layer = LoraLayer(down=torch.full((2, 3), value), up=torch.full((4, 2), -value), alpha=alpha)
    return write_lora_file(folder / name, {"lora_unet_x": layer})


def test_weights_are_each_checkpoints_share_of_the_top_images(tmp_path):
    a, b, c = (tmp_path / f"checkpoint-{n}.safetensors" for n in (10, 20, 30))
    scores = [ValidationScore(a, 10, None, 0.50), ValidationScore(a, 10, None, 0.91),
              ValidationScore(b, 20, None, 0.90), ValidationScore(b, 20, None, 0.89),
              ValidationScore(c, 30, None, 0.10), ValidationScore(c, 30, None, None)]
    assert checkpoint_weights(scores, top_n=4) == {a: 0.5, b: 0.5}
    assert checkpoint_weights(scores, top_n=1) == {a: 1.0}


def test_without_any_score_the_last_checkpoint_wins(tmp_path):
    a, b = tmp_path / "checkpoint-10.safetensors", tmp_path / "checkpoint-20.safetensors"
    scores = [ValidationScore(b, 20, None, None), ValidationScore(a, 10, None, None)]
    assert checkpoint_weights(scores, top_n=3) == {b: 1.0}
    with pytest.raises(LoraFileError, match="no checkpoint"):
        checkpoint_weights([], top_n=3)


def test_weighted_average_is_exact(tmp_path):
    one = _checkpoint(tmp_path, "one.safetensors", 1.0, alpha=2.0)
    four = _checkpoint(tmp_path, "four.safetensors", 4.0, alpha=6.0)
    merged = weighted_average_loras({one: 0.75, four: 0.25})
    layer = merged["lora_unet_x"]
    assert torch.allclose(layer.down, torch.full((2, 3), 0.75 * 1 + 0.25 * 4))
    assert torch.allclose(layer.up, torch.full((4, 2), -(0.75 * 1 + 0.25 * 4)))
    assert layer.alpha == pytest.approx(0.75 * 2 + 0.25 * 6)
    path = write_lora_file(tmp_path / "merged.safetensors", merged)
    assert read_lora_file(path)["lora_unet_x"].alpha == pytest.approx(3.0)


def test_checkpoints_with_different_layers_are_not_merged(tmp_path):
    one = _checkpoint(tmp_path, "one.safetensors", 1.0)
    other = write_lora_file(tmp_path / "other.safetensors",
                            {"lora_unet_y": LoraLayer(torch.ones(2, 3), torch.ones(4, 2), 1.0)})
    with pytest.raises(LoraFileError, match="different layers"):
        weighted_average_loras({one: 0.5, other: 0.5})


@pytest.mark.parametrize(("photos", "expected"), [(1, 200), (3, 600), (4, 800), (15, 800)])
def test_easyphoto_step_rule(photos, expected):
    assert planned_steps(photos, 200, 800) == expected
