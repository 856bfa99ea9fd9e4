"""Double of internal_controlnet/external_code.py (API version 3): what other extensions call.

Units may be dicts or ControlNetUnit objects; `update_cn_script_in_processing` puts them in the
ControlNet script's slice of p.script_args, padded with disabled units up to the unit count setting,
and does nothing at all when ControlNet is not among p.scripts or p.script_args is too short.
"""

from __future__ import annotations

from copy import copy
from typing import Any, List, Optional, Union

from internal_controlnet import extension
from internal_controlnet.args import ControlNetUnit
from internal_controlnet.enums import ControlMode, ResizeMode  # noqa: F401 - part of the public API

from modules import shared


def get_api_version() -> int:
    return 3


def get_models(update: bool = False) -> List[str]:
    """Every model file found, as "name [hash]" (the value a unit's `model` takes)."""
    if update:
        extension.update_cn_models()
    return list(extension.cn_models_names.values())


def get_modules(alias_names: bool = False) -> List[str]:
    return [(p.label if alias_names else p.name) for p in extension.PREPROCESSORS.values()]


def find_cn_script(script_runner) -> Optional[Any]:
    if script_runner is None:
        return None
    for script in script_runner.alwayson_scripts:
        if is_cn_script(script):
            return script
    return None


def is_cn_script(script) -> bool:
    return script.title().lower() == "controlnet"


def to_processing_unit(unit: Union[dict, ControlNetUnit]) -> ControlNetUnit:
    if isinstance(unit, dict):
        return ControlNetUnit.from_dict(unit)
    assert isinstance(unit, ControlNetUnit)
    return unit


def get_all_units_from(script_args: List[Any]) -> List[ControlNetUnit]:
    return [to_processing_unit(arg) for arg in script_args if isinstance(arg, (ControlNetUnit, dict))]


def get_all_units(script_runner, script_args: List[Any]) -> List[ControlNetUnit]:
    cn_script = find_cn_script(script_runner)
    if cn_script:
        return get_all_units_from(script_args[cn_script.args_from:cn_script.args_to])
    return []


def get_all_units_in_processing(p) -> List[ControlNetUnit]:
    return get_all_units(p.scripts, p.script_args)


def update_cn_script(script_runner, script_args, cn_units):
    script_args_type = type(script_args)
    assert script_args_type in (tuple, list), script_args_type
    updated_script_args = list(copy(script_args))
    cn_script = find_cn_script(script_runner)
    if cn_script is None or len(script_args) < cn_script.args_from:
        return script_args
    max_models = shared.opts.data.get("control_net_unit_count", 3)
    cn_units = cn_units + [ControlNetUnit(enabled=False)] * max(max_models - len(cn_units), 0)
    cn_script_args_diff = 0
    for script in script_runner.alwayson_scripts:
        if script is cn_script:
            cn_script_args_diff = len(cn_units) - (cn_script.args_to - cn_script.args_from)
            updated_script_args[script.args_from:script.args_to] = cn_units
            script.args_to = script.args_from + len(cn_units)
        else:
            script.args_from += cn_script_args_diff
            script.args_to += cn_script_args_diff
    return script_args_type(updated_script_args)


def update_cn_script_in_processing(p, cn_units, **_kwargs):
    p.script_args = update_cn_script(p.scripts, p.script_args_value, cn_units)


ControlNetUnit.cls_match_model = lambda model: True
ControlNetUnit.cls_match_module = lambda module: extension.get_preprocessor(module) is not None
ControlNetUnit.cls_get_preprocessor = extension.get_preprocessor
