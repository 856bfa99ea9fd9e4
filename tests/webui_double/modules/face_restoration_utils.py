"""Double of modules/face_restoration_utils.py: CommonFaceRestoration, shared by CodeFormer and GFPGAN.

As in the real one, a restorer whose network cannot be loaded logs "Unable to load face-restoration
model" on this module's logger and hands back the very array it was given. With weights present,
the double's "network" is a blend towards a smoothed copy (facexlib's detect-align-paste is not
modelled: the whole image is treated as the face).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from modules import face_restoration

logger = logging.getLogger(__name__)


class SmoothingNet:
    """Stands in for a restoration network: `strength` 1 = fully smoothed, 0 = untouched."""

    def __call__(self, np_image: np.ndarray, strength: float) -> np.ndarray:
        smoothed = np.asarray(Image.fromarray(np_image).filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
        mixed = (1.0 - strength) * np_image.astype(np.float32) + strength * smoothed
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


class CommonFaceRestoration(face_restoration.FaceRestoration):
    model_download_name = ""

    def __init__(self, model_path: str):
        super().__init__()
        self.net = None
        self.model_path = model_path
        Path(model_path).mkdir(parents=True, exist_ok=True)

    def load_net(self):
        """Offline the real load_models() finds nothing to download; the loader then raises."""
        if not (Path(self.model_path) / self.model_download_name).is_file():
            raise ValueError(f"No {self.name()} model found")
        return SmoothingNet()

    def restore_with_helper(self, np_image, restore_face):
        try:
            if self.net is None:
                self.net = self.load_net()
        except Exception:
            logger.warning("Unable to load face-restoration model", exc_info=True)
            return np_image
        return restore_face(np_image)
