"""Resize, CenterCrop, RandomCrop, RandomHorizontalFlip, ToTensor, Normalize and Compose on PIL images."""

from __future__ import annotations

import enum
import random

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    NEAREST = Image.NEAREST
    BILINEAR = Image.BILINEAR
    BICUBIC = Image.BICUBIC
    LANCZOS = Image.LANCZOS


class Compose:
    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, value):
        for step in self.steps:
            value = step(value)
        return value


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Resize:
    """An int: the short side becomes `size`, the aspect kept; a pair: exactly (height, width)."""

    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        if isinstance(self.size, int):
            width, height = image.size
            short = min(width, height)
            width, height = round(width * self.size / short), round(height * self.size / short)
        else:
            height, width = _pair(self.size)
        return image.resize((width, height), self.interpolation.value)


class CenterCrop:
    def __init__(self, size):
        self.height, self.width = _pair(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        left = round((image.width - self.width) / 2)
        top = round((image.height - self.height) / 2)
        return image.crop((left, top, left + self.width, top + self.height))


class RandomCrop(CenterCrop):
    def __call__(self, image: Image.Image) -> Image.Image:
        left = random.randint(0, image.width - self.width)  # noqa: S311 - a crop, not a secret
        top = random.randint(0, image.height - self.height)  # noqa: S311
        return image.crop((left, top, left + self.width, top + self.height))


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < self.p else image  # noqa: S311


class ToTensor:
    def __call__(self, image: Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, tensor):
        return (tensor - self.mean) / self.std
