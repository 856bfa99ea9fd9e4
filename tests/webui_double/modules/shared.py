"""Double of modules/shared.py: cmd_opts, opts (set by shared_init.initialize) and the re-exports."""

from __future__ import annotations

import sys

from modules import options, shared_cmd_options
from modules.paths_internal import data_path, extensions_dir, models_path, script_path  # noqa: F401

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser
config_filename = cmd_opts.ui_settings_file

opts: options.Options = None
restricted_opts: set[str] = None
settings_components: dict = None

options_section = options.options_section
OptionInfo = options.OptionInfo


def list_checkpoint_tiles(use_short=False):
    import modules.sd_models

    return modules.sd_models.checkpoint_tiles(use_short)


def refresh_checkpoints():
    import modules.sd_models

    return modules.sd_models.list_models()

# Set at start-up like the real ones: `state` by shared_init.initialize(), `face_restorers` by the
# CodeFormer / GFPGAN setup_model() calls, `sd_upscalers` by modelloader.load_upscalers().
state = None
total_tqdm = None
device = "cpu"  # the real one: devices.device, set at start-up
sd_model = None  # the real one is a property that loads a model on demand; the double loads none
progress_print_out = sys.stdout
face_restorers = []
sd_upscalers = []
