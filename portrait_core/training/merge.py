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
    """The weighted average of the checkpoints' weight changes, layer by layer, as a LoRA of their rank.

    Averaging the down and up factors separately is not the average of the changes they make
    (mean(up) @ mean(down) != mean(up @ down)). Here each layer's change ΔW_i = alpha_i / rank_i ·
    up_i @ down_i is averaged exactly, then factorised again to the checkpoints' rank by a truncated SVD
    (the closest rank-r change in the Frobenius norm). It is exact whenever the average has that rank,
    e.g. a single checkpoint, or checkpoints whose changes share their directions."""
    total = sum(weights.values())
    if total <= 0:
        raise LoraFileError("checkpoint weights must add up to more than zero")
    checkpoints = []
    for path, weight in weights.items():
        layers = read_lora_file(path)
        if checkpoints and set(layers) != set(checkpoints[0][1]):
            raise LoraFileError(f"{path.name} has different layers from the other checkpoints; cannot merge")
        checkpoints.append((weight / total, layers))
    return {prefix: _merged_layer([(share, layers[prefix]) for share, layers in checkpoints])
            for prefix in checkpoints[0][1]}


def _merged_layer(parts: list[tuple[float, LoraLayer]]) -> LoraLayer:
    import torch

    first = parts[0][1]
    rank, alpha = first.rank, float(first.alpha)
    # The average change as one product of stacked factors: [s_1·up_1 | s_2·up_2 ...] @ [down_1; down_2 ...],
    # with s_i = share_i · alpha_i / rank_i. Its SVD comes from two thin QRs and one small SVD, never the
    # full out x in matrix.
    ups = torch.cat([layer.up.float().flatten(1) * (share * float(layer.alpha) / layer.rank)
                     for share, layer in parts], dim=1)
    downs = torch.cat([layer.down.float().flatten(1) for _, layer in parts], dim=0)
    q_up, r_up = torch.linalg.qr(ups)
    q_down, r_down = torch.linalg.qr(downs.T)
    u, singular, vh = torch.linalg.svd(r_up @ r_down.T, full_matrices=False)
    kept = min(rank, singular.numel())
    root = singular[:kept].sqrt()
    # Stored with the checkpoints' alpha: the loader scales by alpha / rank, so the factors carry its inverse.
    scale = alpha / rank
    up = (q_up @ u[:, :kept]) * (root / scale)
    down = root[:, None] * (vh[:kept] @ q_down.T)
    if kept < rank:  # fewer independent directions than the rank: pad with zeros, keep the file's shape
        up = torch.cat([up, up.new_zeros(up.shape[0], rank - kept)], dim=1)
        down = torch.cat([down, down.new_zeros(rank - kept, down.shape[1])], dim=0)
    return LoraLayer(down=down.reshape(rank, *first.down.shape[1:]).contiguous(),
                     up=up.reshape(first.up.shape[0], rank, *first.up.shape[2:]).contiguous(), alpha=alpha)
