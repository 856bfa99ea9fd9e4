"""Stand-in for the parts of sd-webui-controlnet's scripts/ that run during generation:
global_state (model list), the preprocessors, and the always-on "ControlNet" script.

Real behaviour kept: models are "name [hash]" for every file in models/ControlNet (and the extension's
models/); a unit's model may also be given by its lower-case name or a part of it. The script's
process() validates the units it finds in p.script_args, loads every model and runs every
preprocessor; any failure (unknown model, missing annotator weights, bad unit) raises, which the
WebUI only reports — the image is then generated WITHOUT any control and no detected map is
returned, while the infotext already lists the units. When it works, postprocess() appends one
detected map per unit to processed.images (unless "control_net_no_detectmap" is set).

The double's "UNet hook" is `p.controlnet_double_controls`: portrait_core Controls holding the
detected maps, which the diffusers backend runs (model name -> kind from `model_kinds`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from modules import paths_internal, scripts, shared

CN_MODEL_EXTS = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
EXTENSION_DIR = Path(__file__).resolve().parent
cn_models: OrderedDict[str, Optional[str]] = OrderedDict()
cn_models_names: dict[str, str] = {}
model_kinds: dict[str, str] = {}
"""lower-case model file stem -> the tiny model's ControlNet kind that plays it (set by the test set-up)."""


def models_dir() -> Path:
    return Path(paths_internal.models_path) / "ControlNet"


def update_cn_models() -> None:
    cn_models.clear()
    found = OrderedDict()
    extra = shared.opts.data.get("control_net_models_path", None)
    for folder in (models_dir(), EXTENSION_DIR / "models", *([Path(extra)] if extra else [])):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix in CN_MODEL_EXTS and path.stem != "None":
                digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
                found.setdefault(f"{path.stem} [{digest}]", str(path))
    cn_models.update({"None": None, **found})
    cn_models_names.clear()
    for name_and_hash, filename in cn_models.items():
        if filename is not None:
            cn_models_names[Path(filename).stem.lower()] = name_and_hash


def find_closest_model_name(search: str) -> Optional[str]:
    if not search:
        return None
    if search in cn_models:
        return search
    search = search.lower()
    if search in cn_models_names:
        return cn_models_names[search]
    applicable = sorted((name for name in cn_models_names if search in name.lower()), key=len)
    return cn_models_names[applicable[0]] if applicable else None


def annotator_models_path() -> Path:
    """As annotator/annotator_path.py: the setting, else the flag, else the extension's annotator/downloads."""
    configured = shared.opts.data.get("control_net_modules_path", None) or getattr(
        shared.cmd_opts, "controlnet_annotator_models_path", None)
    return Path(configured) if configured else EXTENSION_DIR / "annotator" / "downloads"


@dataclass(frozen=True)
class Preprocessor:
    name: str
    label: str
    compute: Callable[[np.ndarray, float, float], np.ndarray]
    annotator_file: str = ""
    """Weights the preprocessor downloads on first use; offline and absent, it raises."""

    def __call__(self, image: np.ndarray, slider_1: float, slider_2: float) -> np.ndarray:
        if self.annotator_file and not (annotator_models_path() / self.annotator_file).is_file():
            raise RuntimeError(f"{self.name}: could not download {self.annotator_file} (offline)")
        return self.compute(image, slider_1, slider_2)


def _canny(image, low, high):
    from portrait_core.core import imaging

    low = 100 if low < 0 else low
    high = 200 if high < 0 else high
    return np.asarray(imaging.canny_map(Image.fromarray(image), int(low), int(high)))


def _color_grid(image, *_):
    from portrait_core.core import imaging

    return np.asarray(imaging.color_grid_map(Image.fromarray(image)))


def _unchanged(image, *_):
    return image


PREPROCESSORS = {p.name: p for p in (
    Preprocessor("none", "none", _unchanged),
    Preprocessor("canny", "canny", _canny),
    Preprocessor("tile_resample", "tile_resample", _unchanged),
    Preprocessor("color", "t2ia_color_grid", _color_grid),
    Preprocessor("openpose", "openpose", _unchanged, "openpose/body_pose_model.pth"),
    Preprocessor("openpose_full", "openpose_full", _unchanged, "openpose/body_pose_model.pth"),
    Preprocessor("ip-adapter_clip_sd15", "ip-adapter_clip_h", _unchanged, "clip_vision/clip_h.pth"),
    Preprocessor("ip-adapter_clip_sdxl_plus_vith", "ip-adapter_clip_sdxl_plus_vith", _unchanged,
                 "clip_vision/clip_h.pth"),
    Preprocessor("instant_id_face_embedding", "instant_id_face_embedding", _unchanged,
                 "insightface/models/antelopev2/glintr100.onnx"),
    Preprocessor("instant_id_face_keypoints", "instant_id_face_keypoints", _unchanged,
                 "insightface/models/antelopev2/scrfd_10g_bnkps.onnx"),
)}


def get_preprocessor(name: str) -> Optional[Preprocessor]:
    by_label = {p.label: p for p in PREPROCESSORS.values()}
    return by_label.get(name, PREPROCESSORS.get(name))


CONTROL_MODES = {"Balanced": "balanced", "My prompt is more important": "prompt",
                 "ControlNet is more important": "control"}


class Script(scripts.Script):
    """The always-on "ControlNet" script (scripts/controlnet.py)."""

    def __init__(self):
        self.detected_map = []
        self.latest_network = None

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        count = shared.opts.data.get("control_net_unit_count", 3)
        return [scripts.UiValue(None, f"ControlNet Unit {i}") for i in range(count)]

    def process(self, p, *args):
        from internal_controlnet import external_code

        self.latest_network = None
        units = [unit for unit in external_code.get_all_units_in_processing(p) if unit.enabled]
        for index, unit in enumerate(units):  # written before anything can fail, as the real one does
            p.extra_generation_params[f"ControlNet {index}"] = unit.serialize()
        if not units:
            return
        controls, maps = zip(*(self.control_for(p, unit) for unit in units), strict=True)
        p.controlnet_double_controls = list(controls)
        self.detected_map = list(maps)
        self.latest_network = True

    @staticmethod
    def control_for(p, unit):
        from portrait_core.hosts.base import Control

        if unit.model in (None, "None"):
            raise RuntimeError("You have not selected any ControlNet Model.")
        model = find_closest_model_name(unit.model)
        if model is None:
            raise RuntimeError(f"model not found: {unit.model}")
        if not Path(cn_models[model]).exists():
            raise ValueError(f"file not found: {cn_models[model]}")
        kind = model_kinds.get(Path(cn_models[model]).stem.lower())
        if kind is None:
            raise RuntimeError(f"{model}: the double has no tiny ControlNet for this model")
        image = unit.get_input_image()
        if image is None:
            image = np.asarray(p.init_images[0].convert("RGB")) if getattr(p, "init_images", None) else None
        if image is None:
            raise ValueError("controlnet is enabled but no input image is given")
        detected = get_preprocessor(unit.module)(image, unit.threshold_a, unit.threshold_b)
        detected_map = Image.fromarray(detected).resize((p.width, p.height), Image.LANCZOS)
        control = Control(kind, detected_map, unit.weight, unit.guidance_start, unit.guidance_end,
                          CONTROL_MODES[unit.control_mode.value], preprocessed=True)
        return control, detected_map

    def postprocess(self, p, processed, *args):
        p.controlnet_double_controls = []
        if self.latest_network is None:
            return
        if not shared.opts.data.get("control_net_no_detectmap", False):
            processed.images.extend(self.detected_map)
        self.latest_network = None
        self.detected_map = []


def on_ui_settings():
    """The extension's settings that generation reads (real keys and defaults)."""
    section = ("control_net", "ControlNet")
    for key, default, label in (
        ("control_net_models_path", "", "Extra path to scan for ControlNet models"),
        ("control_net_modules_path", "", "Path to directory containing annotator model directories"),
        ("control_net_unit_count", 3, "Multi-ControlNet: ControlNet unit number"),
        ("control_net_no_detectmap", False, "Do not append detectmap to output"),
        ("control_net_allow_script_control", False, "Allow other script to control this extension"),
    ):
        shared.opts.add_option(key, shared.OptionInfo(default, label, section=section))
