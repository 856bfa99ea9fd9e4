"""Opt-in (`-m webui`): check the WebUI double against a real A1111 checkout named by PORTRAIT_WEBUI_DIR.

The fast tier runs the extension against `tests/webui_double/`; these tests read the real WebUI's
source (with `ast`, no import: that would need its whole environment) and fail when a name the
double offers, and so the extension relies on, does not exist in the real one. With ControlNet
installed under `extensions/sd-webui-controlnet`, its unit fields and API functions are checked too.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.webui


@pytest.fixture(scope="module")
def webui_dir() -> Path:
    folder = os.environ.get("PORTRAIT_WEBUI_DIR")
    if not folder:
        pytest.skip("set PORTRAIT_WEBUI_DIR to an Automatic1111 WebUI folder to run these checks")
    path = Path(folder).expanduser()
    if not (path / "modules" / "processing.py").is_file():
        pytest.skip(f"{path} is not a WebUI folder (no modules/processing.py)")
    return path


def class_fields(source: Path, class_name: str) -> set[str]:
    """Names assigned or annotated in a class body (dataclass fields, pydantic fields)."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            names = {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)
                     and isinstance(item.target, ast.Name)}
            names |= {target.id for item in node.body if isinstance(item, ast.Assign)
                      for target in item.targets if isinstance(target, ast.Name)}
            return names
    raise AssertionError(f"{source} defines no class {class_name}")


def functions(source: Path) -> set[str]:
    return {node.name for node in ast.parse(source.read_text(encoding="utf-8")).body
            if isinstance(node, ast.FunctionDef)}


def double_module(name: str):
    from webui_double import double_on_path

    with double_on_path([]):
        import importlib

        return importlib.import_module(name)


@pytest.mark.parametrize("class_name", ["StableDiffusionProcessingImg2Img", "StableDiffusionProcessingTxt2Img"])
def test_processing_fields_of_the_double_exist_in_the_real_webui(webui_dir, class_name):
    processing = double_module("modules.processing")
    ours = {field.name for field in dataclasses.fields(getattr(processing, class_name))}
    real_source = webui_dir / "modules" / "processing.py"
    real = class_fields(real_source, class_name) | class_fields(real_source, "StableDiffusionProcessing")
    assert ours - real == set(), f"the double's {class_name} has fields the real one lacks"


def test_callback_registration_functions_exist(webui_dir):
    script_callbacks = double_module("modules.script_callbacks")
    ours = {name for name in dir(script_callbacks) if name.startswith("on_")}
    assert ours - functions(webui_dir / "modules" / "script_callbacks.py") == set()


def test_controlnet_api_and_unit_fields(webui_dir):
    extension = webui_dir / "extensions" / "sd-webui-controlnet"
    if not (extension / "internal_controlnet" / "external_code.py").is_file():
        pytest.skip("sd-webui-controlnet is not installed in this WebUI")
    needed = {"get_api_version", "get_models", "update_cn_script_in_processing"}
    assert needed <= functions(extension / "internal_controlnet" / "external_code.py")
    unit = double_module("internal_controlnet.args").ControlNetUnit
    real_unit = class_fields(extension / "internal_controlnet" / "args.py", "ControlNetUnit")
    assert set(unit.__fields__) - real_unit == set(), "unit fields the real ControlNetUnit lacks"
