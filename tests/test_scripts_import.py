"""scripts/portrait_studio.py imported the way the WebUI imports it, against the WebUI double."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from webui_double import DOUBLE_ROOT, webui_started

EXTENSION_DIR = Path("extensions") / "portrait-studio"
pytestmark = pytest.mark.usefixtures("webui_state_restored")

PORTRAIT_OPTIONS = {
    "portrait_models_dir": "",
    "portrait_base_checkpoint": "",
    "portrait_lora_weight": 0.9,
    "portrait_codeformer_fidelity": 0.7,
    "portrait_templates_dir": "",
    "portrait_offline": False,
    "portrait_training_takes_queue": True,
}




def core_settings():
    """portrait_core's settings as the copy the script imported sees them."""
    return sys.modules["portrait_core.config"].settings()


def test_flags_reach_portrait_core(tmp_path):
    models = tmp_path / "portrait-models"
    argv = ["--portrait-models-dir", str(models), "--portrait-offline", "--portrait-loglevel", "debug"]
    with webui_started(tmp_path / "webui", argv):
        settings = core_settings()
        assert settings.models_dir == models
        assert settings.offline is True
        assert logging.getLogger("portrait").level == logging.DEBUG
        assert logging.getLogger().level != logging.DEBUG, "the root logger must stay untouched"


def test_trained_loras_go_to_the_webuis_lora_dir(tmp_path):
    with webui_started(tmp_path / "webui", ["--lora-dir", str(tmp_path / "my-loras")]):
        assert core_settings().lora_folder == tmp_path / "my-loras"
        assert script_services().workspace.loras == tmp_path / "my-loras"
    # Without the flag: the Lora extension's own default, models/Lora, as in the real WebUI.
    with webui_started(tmp_path / "webui2"):
        services = script_services()
        assert services.workspace.loras == tmp_path / "webui2" / "models" / "Lora"
        assert services.workspace.identities == core_settings().identities_dir
        assert services.in_webui and services.workspace.jobs == core_settings().jobs_dir


def script_services():
    """The one PortraitServices the extension's script builds for the tabs and the HTTP routes."""
    from modules import scripts

    [script] = [module for path, module in scripts.loaded_modules.items() if path.endswith("portrait_studio.py")]
    return script.services()


def test_without_flags_models_live_in_the_webuis_models_folder(tmp_path):
    with webui_started(tmp_path / "webui", environ={"PORTRAIT_OFFLINE": ""}):
        settings = core_settings()
        assert settings.models_dir == tmp_path / "webui" / "models" / "PortraitStudio"
        assert settings.offline is False
        assert logging.getLogger("portrait").level == logging.INFO


def test_environment_variable_is_honoured_when_no_flag_or_setting_says_otherwise(tmp_path):
    elsewhere = tmp_path / "from-env"
    with webui_started(tmp_path / "webui", environ={"PORTRAIT_MODELS_DIR": str(elsewhere)}):
        assert core_settings().models_dir == elsewhere


def test_saved_settings_apply_at_start_and_a_flag_beats_them(tmp_path):
    saved = {"portrait_models_dir": str(tmp_path / "saved"), "portrait_offline": True}
    with webui_started(tmp_path / "a", saved_settings=saved):
        assert core_settings().models_dir == tmp_path / "saved"
        assert core_settings().offline is True
    with webui_started(tmp_path / "b", ["--portrait-models-dir", str(tmp_path / "flag")], saved_settings=saved):
        assert core_settings().models_dir == tmp_path / "flag"


def test_the_settings_and_app_started_callbacks_are_registered(tmp_path):
    with webui_started(tmp_path / "webui") as webui:
        callbacks = webui["script_callbacks"]
        [settings_callback] = callbacks.registered("ui_settings")
        assert settings_callback.script == str(tmp_path / "webui" / EXTENSION_DIR / "scripts" / "portrait_studio.py")
        nonempty = {category for category, registered in callbacks.callback_map.items() if registered}
        assert {"callbacks_ui_settings", "callbacks_app_started"} <= nonempty


def test_setting_defaults_are_the_generation_parameters_defaults():
    from portrait_core.params import GenerateParams

    fields = GenerateParams.__fields__
    assert PORTRAIT_OPTIONS["portrait_lora_weight"] == fields["lora_weight"].default
    assert PORTRAIT_OPTIONS["portrait_codeformer_fidelity"] == fields["codeformer_weight"].default


def test_settings_section_holds_the_portrait_options_with_their_defaults(tmp_path):
    with webui_started(tmp_path / "webui") as webui:
        webui["script_callbacks"].ui_settings_callback()
        opts = webui["shared"].opts
        ours = {key: info for key, info in opts.data_labels.items() if key.startswith("portrait_")}
        assert {key: info.default for key, info in ours.items()} == PORTRAIT_OPTIONS
        assert {info.section for info in ours.values()} == {("portrait_studio", "Portrait Studio")}
        assert {info.category_id for info in ours.values()} == {"sd"}
        assert opts.portrait_lora_weight == 0.9


def test_a_saved_value_survives_registering_the_option(tmp_path):
    with webui_started(tmp_path / "webui", saved_settings={"portrait_lora_weight": 0.75}) as webui:
        webui["script_callbacks"].ui_settings_callback()
        assert webui["shared"].opts.portrait_lora_weight == 0.75


def test_every_option_renders_on_the_settings_page(tmp_path):
    checkpoints = tmp_path / "webui" / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / "realistic.safetensors").write_bytes(b"")
    with webui_started(tmp_path / "webui") as webui:
        webui["script_callbacks"].ui_settings_callback()
        from modules import ui_settings

        components = {key: ui_settings.create_setting_component(key) for key in PORTRAIT_OPTIONS}
        assert components["portrait_lora_weight"].value == 0.9
        fidelity = components["portrait_codeformer_fidelity"]
        assert (fidelity.minimum, fidelity.maximum) == (0.0, 1.0)
        choices = [choice[0] if isinstance(choice, tuple) else choice
                   for choice in components["portrait_base_checkpoint"].choices]
        assert choices == ["", "realistic.safetensors"]


def test_changing_a_setting_repoints_portrait_core_at_once(tmp_path):
    with webui_started(tmp_path / "webui") as webui:
        webui["script_callbacks"].ui_settings_callback()
        opts = webui["shared"].opts
        assert opts.set("portrait_models_dir", str(tmp_path / "chosen"))
        assert core_settings().models_dir == tmp_path / "chosen"
        assert opts.set("portrait_offline", True)
        assert core_settings().offline is True
        assert opts.set("portrait_models_dir", "")
        assert core_settings().models_dir == tmp_path / "webui" / "models" / "PortraitStudio"


def test_reload_ui_without_preload_flags_still_imports(tmp_path):
    # Installed from the Extensions tab, then "Reload UI": scripts are imported again, but preload.py
    # never ran, so cmd_opts has no --portrait-* attributes.
    with webui_started(tmp_path / "webui", ["--portrait-offline"]) as webui:
        cmd_opts = webui["shared"].cmd_opts
        for name in ("portrait_models_dir", "portrait_offline", "portrait_loglevel"):
            delattr(cmd_opts, name)
        webui["scripts"].load_scripts()
        assert core_settings().offline is False
        assert webui["script_callbacks"].registered("ui_settings")


def test_load_leaves_sys_path_as_it_was(tmp_path):
    before = list(sys.path)
    with webui_started(tmp_path / "webui"):
        extension_dir = tmp_path / "webui" / EXTENSION_DIR
        assert str(extension_dir) not in sys.path
    assert sys.path == before


# Run in a fresh interpreter where portrait_core is reachable only through the extension folder, as in
# a real WebUI: reports where portrait_core came from and which heavy libraries the import pulled in.
IMPORT_PROBE = """
import json, sys
from pathlib import Path
from webui_double import webui_started
with webui_started(Path(sys.argv[1])):
    heavy = sorted(name for name in ("torch", "diffusers", "transformers", "onnxruntime", "mediapipe", "cv2")
                   if name in sys.modules)
    print(json.dumps({"portrait_core": sys.modules["portrait_core"].__file__, "heavy": heavy}))
"""


def test_fresh_webui_finds_portrait_core_in_the_extension_and_pulls_in_no_heavy_library(tmp_path):
    environ = {**os.environ, "PYTHONPATH": str(DOUBLE_ROOT.parent)}
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(tmp_path / "webui")], capture_output=True,
                            text=True, env=environ, cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    extension_dir = tmp_path / "webui" / EXTENSION_DIR
    assert Path(report["portrait_core"]) == extension_dir / "portrait_core" / "__init__.py"
    assert report["heavy"] == []


def test_the_portrait_studio_tab_builds_inside_the_webui(tmp_path):
    import gradio as gr

    with webui_started(tmp_path / "webui") as webui:
        from modules import infotext_utils

        [(blocks, title, elem_id)] = webui["script_callbacks"].ui_tabs_callback()
        assert isinstance(blocks, gr.Blocks) and title == "Portrait Studio" and elem_id == "portrait_studio"
        assert [b.tabname for b in infotext_utils.registered_param_bindings] == ["img2img", "inpaint", "extras"]
        ids = [block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)]
        assert ids and all(i.startswith("portrait") for i in ids)
