"""Training images: read once, encoded once by the VAE (with their mirror images), sampled per step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from portrait_core.errors import InputImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class TrainingExample:
    image_path: Path
    caption: str


def list_examples(dataset_dir: Path, default_caption: str) -> list[TrainingExample]:
    """Images of the dataset folder in name order, each with its `<stem>.txt` caption or the default."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InputImageError(f"dataset folder not found: {dataset_dir}")
    examples = []
    for path in sorted(dataset_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else default_caption
        examples.append(TrainingExample(path, caption or default_caption))
    if not examples:
        raise InputImageError(f"dataset folder {dataset_dir} holds no training images ({', '.join(IMAGE_SUFFIXES)})")
    return examples


def load_square(path: Path, resolution: int) -> Image.Image:
    """The image centre-cropped to a square and resized to `resolution`; names the file if unreadable."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise InputImageError(f"training image {path.name} cannot be read: {error}") from error
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)


class LatentCache:
    """VAE latent distributions (mean, std) of every image and of its mirror image, computed once.

    A training step then only samples `mean + std * noise`: the VAE never runs again. The encoding is the
    longest silent part of a start on a CPU (minutes at 512 px), so `on_progress(done, total)` hears of every
    batch (counted in images, mirrors included), starting with (0, total).
    """

    def __init__(self, vae, images: list[Image.Image], device: str, batch_size: int = 4,
                 on_progress: Callable[[int, int], None] | None = None):
        import torch

        self.scaling_factor = float(vae.config.scaling_factor)
        pixels = torch.stack([_to_tensor(image) for image in images])
        pixels = torch.cat([pixels, pixels.flip(-1)])  # originals, then mirrors
        means, stds = [], []
        report = on_progress or (lambda done, total: None)
        report(0, len(pixels))
        with torch.no_grad():
            for start in range(0, len(pixels), batch_size):
                chunk = pixels[start : start + batch_size].to(device=device, dtype=vae.dtype)
                dist = vae.encode(chunk).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
                report(min(start + batch_size, len(pixels)), len(pixels))
        self.means = torch.cat(means)
        self.stds = torch.cat(stds)
        self.count = len(images)

    def sample(self, indices, flips, generator):
        """Scaled latents for `indices`, mirrored where `flips` is true."""
        import torch

        rows = torch.as_tensor(indices) + torch.as_tensor(flips, dtype=torch.long) * self.count
        noise = torch.randn(self.means[rows].shape, generator=generator).to(self.means.device)
        return (self.means[rows] + self.stds[rows] * noise) * self.scaling_factor


def _to_tensor(image: Image.Image):
    import numpy as np
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)
