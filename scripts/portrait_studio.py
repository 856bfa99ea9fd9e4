"""Portrait Studio inside the WebUI: applies the --portrait-* flags and registers its callbacks.

The WebUI imports this file with the extension folder first on sys.path, which is what makes
`portrait_core` importable. Keep it thin: no torch, no diffusers, no model loads at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import gradio as gr

from modules import script_callbacks, shared
from portrait_core import config, log
from portrait_core.params import GenerateParams

logger = log.get_logger("webui")

SETTINGS_SECTION = ("portrait_studio", "Portrait Studio")
SETTINGS_CATEGORY = "sd"
WEBUI_MODELS_SUBDIR = "PortraitStudio"


def flag(name: str, default=None):
    """A --portrait-* flag's value. Missing when preload.py has not run yet, e.g. right after the
    extension was installed from the Extensions tab and only the UI was reloaded."""
    return getattr(shared.cmd_opts, name, default)


def saved_option(key: str, default=None):
    """A setting as saved in the WebUI's config.json (loaded before scripts are imported)."""
    return shared.opts.data.get(key, default) if shared.opts is not None else default


def resolve_models_dir(flag_value: str | None, saved_value: str | None, environ: Mapping[str, str],
                       webui_models_path: str) -> Path:
    """--portrait-models-dir, else the Settings value, else PORTRAIT_MODELS_DIR, else models/PortraitStudio."""
    for candidate in (flag_value, saved_value, environ.get(config.ENV_MODELS_DIR)):
        if candidate and str(candidate).strip():
            return Path(str(candidate).strip()).expanduser()
    return Path(webui_models_path) / WEBUI_MODELS_SUBDIR


def resolve_offline(flag_value: bool, saved_value: bool, environ: Mapping[str, str]) -> bool:
    """Offline when any of --portrait-offline, the Settings checkbox or PORTRAIT_OFFLINE says so."""
    return bool(flag_value) or bool(saved_value) or config.Settings.from_env(environ).offline


def apply_configuration() -> config.Settings:
    """Point portrait_core at the models folder and offline mode in force; also the settings' onchange."""
    settings = config.configure(
        models_dir=resolve_models_dir(flag("portrait_models_dir"), saved_option("portrait_models_dir"),
                                      os.environ, shared.models_path),
        offline=resolve_offline(flag("portrait_offline", False), saved_option("portrait_offline", False),
                                os.environ),
        lora_dir=lora_folder(),
    )
    logger.info("models folder %s%s", settings.models_dir, " (offline)" if settings.offline else "")
    return settings


def generate_param_slider(field_name: str, step: float = 0.05) -> tuple[float, dict]:
    """Default and slider range of a GenerateParams field, so the setting cannot disagree with the model."""
    field = GenerateParams.__fields__[field_name]
    return field.default, {"minimum": field.field_info.ge, "maximum": field.field_info.le, "step": step}


def checkpoint_choices() -> dict:
    # "" first: no default, use the checkpoint loaded in the WebUI at the time.
    return {"choices": ["", *shared.list_checkpoint_tiles(False)]}


def settings_options() -> dict[str, shared.OptionInfo]:
    """The "Portrait Studio" section of the WebUI's Settings page, by option key."""
    placement = {"section": SETTINGS_SECTION, "category_id": SETTINGS_CATEGORY}
    lora_weight, lora_weight_range = generate_param_slider("lora_weight")
    codeformer_weight, codeformer_weight_range = generate_param_slider("codeformer_weight")
    return {
        "portrait_models_dir": shared.OptionInfo(
            "", "Models folder", onchange=apply_configuration, **placement,
        ).info(f"empty: --portrait-models-dir, else PORTRAIT_MODELS_DIR, else models/{WEBUI_MODELS_SUBDIR}"),
        "portrait_base_checkpoint": shared.OptionInfo(
            "", "Default base checkpoint for training", gr.Dropdown, checkpoint_choices,
            refresh=shared.refresh_checkpoints, **placement,
        ).info("empty: the checkpoint loaded in the WebUI"),
        "portrait_lora_weight": shared.OptionInfo(
            lora_weight, "Default LoRA weight of a trained identity", gr.Slider, lora_weight_range, **placement,
        ),
        "portrait_codeformer_fidelity": shared.OptionInfo(
            codeformer_weight, "Default CodeFormer fidelity", gr.Slider, codeformer_weight_range, **placement,
        ).info("0 = strongest restoration, 1 = closest to the generated face"),
        "portrait_templates_dir": shared.OptionInfo(
            "", "Your templates folder", **placement,
        ).info("photos listed in the Generate tab's gallery beside the built-in ones; empty: PORTRAIT_HOME/templates"),
        "portrait_offline": shared.OptionInfo(
            False, "Offline mode: never download models", onchange=apply_configuration, **placement,
        ).info("--portrait-offline turns it on regardless"),
        "portrait_training_takes_queue": shared.OptionInfo(
            True, "A training runs as one of the WebUI's jobs", **placement,
        ).info("the top progress bar, console and Interrupt follow it and the checkpoint waits in RAM; "
               "other generations wait until it ends. Off: they run beside it (needs memory for both)"),
    }


def on_ui_settings() -> None:
    for key, info in settings_options().items():
        shared.opts.add_option(key, info)


# What the extension keeps for the life of the WebUI process: one PortraitServices (one job runner, one lock
# per identity, one WebUIHost), shared by the tabs and the HTTP routes. Built on first use.
_runtime: dict[str, object] = {}


def lora_folder() -> Path:
    """The built-in Lora extension's folder (--lora-dir, default models/Lora): trained LoRAs go where the WebUI
    lists them."""
    return Path(flag("lora_dir") or Path(shared.models_path) / "Lora")


def services():
    if "services" not in _runtime:
        from portrait_core.hosts.webui_host import WebUIHost
        from portrait_core.services.runtime import PortraitServices
        from portrait_core.services.workspace import Workspace

        _runtime["services"] = PortraitServices.create(
            Workspace.from_settings(config.settings()), WebUIHost, in_webui=True,
            # Settings → Portrait Studio → Default base checkpoint; empty: the one selected in the WebUI.
            default_checkpoint=lambda: saved_option("portrait_base_checkpoint") or None,
            trainings_take_turn=lambda: bool(saved_option("portrait_training_takes_queue", True)))
    return _runtime["services"]


def on_app_started(demo, app) -> None:
    """Mount /sdapi/v1/portrait/ on the WebUI's server (demo is None under --nowebui)."""
    from portrait_core.adapters.http.api import ApiContext, mount_api

    mount_api(app, ApiContext(services=services(), api_auth=getattr(shared.cmd_opts, "api_auth", None)))


def template_folders() -> list[Path]:
    """The built-in templates, then the user's own folder (Settings → Portrait Studio)."""
    from portrait_core.adapters import ui

    own = saved_option("portrait_templates_dir") or config.settings().home / "templates"
    return [ui.BUILTIN_TEMPLATES_DIR, Path(own).expanduser()]


def on_ui_tabs():
    """The Portrait Studio tab: Train, Generate and Identities, on the WebUI's checkpoints and queue."""
    from modules import infotext_utils, sd_models
    from portrait_core.adapters import ui

    backend = ui.UiBackend(
        services(), template_dirs=template_folders,
        checkpoints=lambda: list(sd_models.checkpoints_list),
        # The option, not shared.sd_model: reading that can load the model.
        default_checkpoint=lambda: saved_option("portrait_base_checkpoint") or saved_option("sd_model_checkpoint"),
        initial_values={"generate": {"lora_weight": saved_option("portrait_lora_weight", 0.9),
                                     "codeformer_weight": saved_option("portrait_codeformer_fidelity", 0.7)}},
        webui=ui.WebUiHooks(send_to_buttons=ui.webui_send_to_buttons(infotext_utils)),
    )
    return ui.webui_tabs(backend)


def register_callbacks() -> None:
    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_app_started(on_app_started)
    script_callbacks.on_ui_tabs(on_ui_tabs)


log.configure_logging(flag("portrait_loglevel", "INFO"))
apply_configuration()
register_callbacks()
