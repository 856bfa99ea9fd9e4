"""Double of sd-webui-controlnet's scripts/enums.py: the enums a unit's fields take (values are the real ones)."""

from __future__ import annotations

from enum import Enum


class InputMode(Enum):
    SIMPLE = "simple"
    BATCH = "batch"
    MERGE = "merge"


class ResizeMode(Enum):
    RESIZE = "Just Resize"
    INNER_FIT = "Crop and Resize"
    OUTER_FIT = "Resize and Fill"


class ControlMode(Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class HiResFixOption(Enum):
    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


class PuLIDMode(Enum):
    FIDELITY = "Fidelity"
    STYLE = "Extremely style"
