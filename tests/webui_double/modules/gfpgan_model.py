"""Double of modules/gfpgan_model.py: GFPGAN, weights models/GFPGAN/GFPGANv1.4.pth."""

from __future__ import annotations

import logging

from modules import errors, face_restoration_utils, shared

logger = logging.getLogger(__name__)
model_download_name = "GFPGANv1.4.pth"
gfpgan_face_restorer = None


class FaceRestorerGFPGAN(face_restoration_utils.CommonFaceRestoration):
    model_download_name = model_download_name

    def name(self):
        return "GFPGAN"

    def restore(self, np_image):
        return self.restore_with_helper(np_image, lambda image: self.net(image, strength=0.8))


def gfpgan_fix_faces(np_image):
    if gfpgan_face_restorer:
        return gfpgan_face_restorer.restore(np_image)
    logger.warning("GFPGAN face restorer not set up")
    return np_image


def setup_model(dirname: str) -> None:
    global gfpgan_face_restorer  # noqa: PLW0603 - mirrors the real module's global
    try:
        gfpgan_face_restorer = FaceRestorerGFPGAN(model_path=dirname)
        shared.face_restorers.append(gfpgan_face_restorer)
    except Exception:
        errors.report("Error setting up GFPGAN", exc_info=True)
