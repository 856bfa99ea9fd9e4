"""Double of modules/upscaler.py (+ a RealESRGAN stand-in): `shared.sd_upscalers` entries.

`UpscalerData.scaler.upscale(img, scale, data_path)` returns a size floored to a multiple of 8;
when a model-based upscaler cannot load its weights the real one reports the error and the image
is only Lanczos-resized — exactly what the double does when the weights file is missing.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageFilter

from modules import errors, shared

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


class Upscaler:
    name = None
    scalers: list

    def __init__(self, create_dirs=False):
        self.scale = 1

    def do_upscale(self, img, selected_model):
        return img

    def upscale(self, img, scale, selected_model: str | None = None):
        self.scale = scale
        dest_w = int((img.width * scale) // 8 * 8)
        dest_h = int((img.height * scale) // 8 * 8)
        for i in range(3):
            if img.width >= dest_w and img.height >= dest_h and (i > 0 or scale != 1):
                break
            if shared.state.interrupted:
                break
            shape = (img.width, img.height)
            img = self.do_upscale(img, selected_model)
            if shape == (img.width, img.height):
                break
        if img.width != dest_w or img.height != dest_h:
            img = img.resize((int(dest_w), int(dest_h)), resample=LANCZOS)
        return img


class UpscalerData:
    def __init__(self, name: str, path: str | None, upscaler: Upscaler | None = None, scale: int = 4, model=None):
        self.name = name
        self.data_path = path
        self.local_data_path = path
        self.scaler = upscaler
        self.scale = scale
        self.model = model


class UpscalerNone(Upscaler):
    name = "None"

    def __init__(self, dirname=None):
        super().__init__(False)
        self.scalers = [UpscalerData("None", None, self)]


class UpscalerLanczos(Upscaler):
    def __init__(self, dirname=None):
        super().__init__(False)
        self.name = "Lanczos"
        self.scalers = [UpscalerData("Lanczos", None, self)]

    def do_upscale(self, img, selected_model=None):
        return img.resize((int(img.width * self.scale), int(img.height * self.scale)), resample=LANCZOS)


class UpscalerNearest(Upscaler):
    def __init__(self, dirname=None):
        super().__init__(False)
        self.name = "Nearest"
        self.scalers = [UpscalerData("Nearest", None, self)]

    def do_upscale(self, img, selected_model=None):
        return img.resize((int(img.width * self.scale), int(img.height * self.scale)), resample=NEAREST)


class UpscalerRealESRGAN(Upscaler):
    """Stand-in for modules/realesrgan_model.py: a 4x model whose weights live in models/RealESRGAN."""

    def __init__(self, dirname):
        super().__init__(False)
        self.name = "RealESRGAN"
        path = str(Path(dirname) / "RealESRGAN_x4plus.pth")
        self.scalers = [UpscalerData("R-ESRGAN 4x+", path, self, 4)]

    def do_upscale(self, img, path):
        if not Path(path).is_file():
            errors.report(f"Unable to load RealESRGAN model {path}", exc_info=False)
            return img
        enlarged = img.resize((img.width * 4, img.height * 4), resample=NEAREST)
        return enlarged.filter(ImageFilter.SHARPEN)


def load_upscalers():
    """What modelloader.load_upscalers() leaves in shared.sd_upscalers."""
    shared.sd_upscalers = [data for scaler in (UpscalerNone(), UpscalerLanczos(), UpscalerNearest(),
                                               UpscalerRealESRGAN(shared.cmd_opts.realesrgan_models_path))
                           for data in scaler.scalers]
