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


def _random_checkpoint(folder: Path, name: str, seed: int, *, shape=(6, 5), rank=2, alpha=2.0,
                       down=None) -> Path:
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features = shape
    layer = LoraLayer(down=down if down is not None else torch.randn(rank, in_features, generator=generator),
                      up=torch.randn(out_features, rank, generator=generator), alpha=alpha)
    conv = LoraLayer(down=torch.randn(rank, 3, 3, 3, generator=generator),
                     up=torch.randn(4, rank, 1, 1, generator=generator), alpha=alpha)
    return write_lora_file(folder / name, {"lora_unet_x": layer, "lora_unet_conv": conv})


def _delta(layer: LoraLayer) -> torch.Tensor:
    return layer.alpha / layer.rank * layer.up.float().flatten(1) @ layer.down.float().flatten(1)


def _exact_average(weights: dict[Path, float], prefix: str) -> torch.Tensor:
    return sum(share * _delta(read_lora_file(path)[prefix]) for path, share in weights.items())


def test_the_merge_is_the_exact_weighted_average_of_the_changes_when_it_has_their_rank(tmp_path):
    shared_down = torch.randn(2, 5, generator=torch.Generator().manual_seed(9))  # same directions in
    one = _random_checkpoint(tmp_path, "one.safetensors", 1, alpha=2.0, down=shared_down)
    two = _random_checkpoint(tmp_path, "two.safetensors", 2, alpha=6.0, down=shared_down)
    weights = {one: 0.75, two: 0.25}
    merged = read_lora_file(write_lora_file(tmp_path / "merged.safetensors", weighted_average_loras(weights)))
    layer = merged["lora_unet_x"]
    assert layer.rank == 2 and layer.up.shape == (6, 2)
    assert torch.allclose(_delta(layer), _exact_average(weights, "lora_unet_x"), atol=1e-5)
    # One checkpoint alone comes back as itself (as a change), convolutions included.
    alone = weighted_average_loras({one: 1.0})["lora_unet_conv"]
    assert alone.down.shape == (2, 3, 3, 3) and alone.up.shape == (4, 2, 1, 1)
    assert torch.allclose(_delta(alone), _delta(read_lora_file(one)["lora_unet_conv"]), atol=1e-5)


def test_the_merge_is_the_closest_change_of_its_rank_and_closer_than_averaging_the_factors(tmp_path):
    paths = [_random_checkpoint(tmp_path, f"c{seed}.safetensors", seed) for seed in range(3)]
    weights = dict(zip(paths, (0.5, 0.25, 0.25), strict=True))
    exact = _exact_average(weights, "lora_unet_x")
    merged = _delta(weighted_average_loras(weights)["lora_unet_x"])
    u, s, vh = torch.linalg.svd(exact)
    best_rank_2 = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]  # Eckart-Young: nothing of rank 2 is closer
    assert torch.allclose(merged, best_rank_2, atol=1e-4)
    layers = [read_lora_file(path)["lora_unet_x"] for path in paths]
    factor_average = LoraLayer(down=sum(w * part.down for w, part in zip(weights.values(), layers, strict=True)),
                               up=sum(w * part.up for w, part in zip(weights.values(), layers, strict=True)), alpha=2.0)
    assert (merged - exact).norm() < (_delta(factor_average) - exact).norm()


def test_checkpoints_with_different_layers_are_not_merged(tmp_path):
    one = _checkpoint(tmp_path, "one.safetensors", 1.0)
    other = write_lora_file(tmp_path / "other.safetensors",
                            {"lora_unet_y": LoraLayer(torch.ones(2, 3), torch.ones(4, 2), 1.0)})
    with pytest.raises(LoraFileError, match="different layers"):
        weighted_average_loras({one: 0.5, other: 0.5})


@pytest.mark.parametrize(("photos", "expected"), [(1, 200), (3, 600), (4, 800), (15, 800)])
def test_easyphoto_step_rule(photos, expected):
    assert planned_steps(photos, 200, 800) == expected
