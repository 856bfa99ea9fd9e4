"""Merge training checkpoints into the final LoRA, weighted by how well each one kept the identity."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from portrait_core.errors import LoraFileError
from portrait_core.models.lora import LoraLayer, read_lora_file


@dataclass(frozen=True)
class ValidationScore:
    """One validation image rendered with the LoRA of `checkpoint`, scored against the user's face."""

    checkpoint: Path
    step: int
    image: Path | None
    identity_score: float | None


def checkpoint_weights(scores: list[ValidationScore], top_n: int) -> dict[Path, float]:
    """Each checkpoint's share of the `top_n` best-scored validation images (shares sum to 1).

    With no scored image at all (no face found in any validation render) the last checkpoint wins.
    """
    scored = sorted((s for s in scores if s.identity_score is not None),
                    key=lambda s: (-s.identity_score, -s.step))
    if not scored:
        if not scores:
            raise LoraFileError("no checkpoint to merge: training saved none")
        latest = max(scores, key=lambda s: s.step)
        return {latest.checkpoint: 1.0}
    best = scored[: max(1, top_n)]
    counts = Counter(s.checkpoint for s in best)
    return {checkpoint: count / len(best) for checkpoint, count in counts.items()}


def weighted_average_loras(weights: dict[Path, float]) -> dict[str, LoraLayer]:
    """Average the down, up and alpha of every layer across checkpoints with the given weights."""
    total = sum(weights.values())
    if total <= 0:
        raise LoraFileError("checkpoint weights must add up to more than zero")
    merged: dict[str, LoraLayer] = {}
    reference_keys = None
    for path, weight in weights.items():
        layers = read_lora_file(path)
        if reference_keys is None:
            reference_keys = set(layers)
        elif set(layers) != reference_keys:
            raise LoraFileError(f"{path.name} has different layers from the other checkpoints; cannot merge")
        share = weight / total
        for prefix, layer in layers.items():
            if prefix not in merged:
                merged[prefix] = LoraLayer(down=layer.down.float() * share, up=layer.up.float() * share,
                                           alpha=layer.alpha * share)
            else:
                into = merged[prefix]
                into.down = into.down + layer.down.float() * share
                into.up = into.up + layer.up.float() * share
                into.alpha = into.alpha + layer.alpha * share
    return merged
