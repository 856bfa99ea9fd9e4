"""Double of modules/cmd_args.py: the WebUI's argparse parser, with the flags the extension meets."""

from __future__ import annotations

import argparse
from pathlib import Path

from modules.paths_internal import data_path, models_path, normalized_filepath

parser = argparse.ArgumentParser()
parser.add_argument("--skip-install", action="store_true", help="launch.py argument: skip installation of packages")
parser.add_argument("--skip-prepare-environment", action="store_true")
parser.add_argument("--loglevel", type=str, default=None)
parser.add_argument("--data-dir", type=normalized_filepath, default=data_path)
parser.add_argument("--models-dir", type=normalized_filepath, default=None)
parser.add_argument("--ui-settings-file", type=str, default=str(Path(data_path) / "config.json"))
parser.add_argument("--freeze-settings", action="store_true", default=False)
parser.add_argument("--api", action="store_true")
parser.add_argument("--api-auth", type=str, default=None)
parser.add_argument("--nowebui", action="store_true")
parser.add_argument("--disable-all-extensions", action="store_true", default=False)
parser.add_argument("--disable-extra-extensions", action="store_true", default=False)
# Added in the real WebUI by the built-in Lora extension's preload.py (extensions-builtin/Lora/preload.py),
# with the same default, <models>/Lora.
parser.add_argument("--lora-dir", type=str, default=str(Path(models_path) / "Lora"),
                    help="Path to directory with Lora networks.")
# Folders of the built-in face restorers and upscalers (real defaults: under the models folder).
parser.add_argument("--codeformer-models-path", type=normalized_filepath,
                    default=str(Path(models_path) / "Codeformer"))
parser.add_argument("--gfpgan-models-path", type=normalized_filepath, default=str(Path(models_path) / "GFPGAN"))
parser.add_argument("--realesrgan-models-path", type=normalized_filepath,
                    default=str(Path(models_path) / "RealESRGAN"))
parser.add_argument("--disable-console-progressbars", action="store_true", default=False,
                    help="do not output progressbars to console")
